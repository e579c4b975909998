//! What the discovery registry should hold, as pure functions of stored objects: one [`Endpoint`] per pod
//! that some Service in its namespace selects, plus the Services, Routes and TLS certificates (from
//! `kubernetes.io/tls` Secrets) converted to their data-plane shapes. [`diff`] turns a desired set into the
//! registry [`Change`]s that make a snapshot equal to it, so only changed objects are written.
//!
//! An endpoint is the pod's node address (`status.hostIP`, else the node's address) with, per container
//! port, the `hostPort` the agent reports in `status.containerStatuses[].ports` (where the process really
//! listens), else the `containerPort`. It is `ready` when the pod is Ready, not terminating and its node is
//! not NotReady; `terminating` when `deletionTimestamp` is set (no new requests, in-flight ones finish).
//! Pods that are not bound, have no address or have finished are not published.

use discovery::{Change, Endpoint, EndpointPort, Object, ObjectKey, Snapshot};
use model::well_known::ZONE_LABEL;
use model::{Node, Pod, PodPhase, Route, Secret, Service};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Whether `service` (a stored Service) selects `pod`: same namespace, non-empty selector, all labels equal.
pub fn selects(service: &Service, pod: &Pod) -> bool {
    service.metadata.namespace == pod.metadata.namespace
        && !service.spec.selector.is_empty()
        && service.spec.selector.iter().all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
}

/// The endpoint of one pod, whether or not a Service selects it; `None` when it cannot receive traffic at
/// all (not bound, no address, finished).
pub fn pod_endpoint(pod: &Pod, node: Option<&Node>) -> Option<Endpoint> {
    let node_name = pod.spec.node_name.clone()?;
    if matches!(pod.phase(), PodPhase::Failed | PodPhase::Succeeded) {
        return None;
    }
    let status = pod.status.as_ref();
    let address: IpAddr = status
        .and_then(|s| s.host_ip.as_deref())
        .and_then(|a| a.parse().ok())
        .or_else(|| node.and_then(Node::address).and_then(|a| a.parse().ok()))?;
    let mut ports = Vec::new();
    for c in &pod.spec.containers {
        let reported = status.and_then(|s| s.container_statuses.iter().find(|cs| cs.name == c.name));
        for p in &c.ports {
            let host = reported
                .and_then(|r| {
                    r.ports.iter().find(|rp| rp.container_port == p.container_port && rp.protocol == p.protocol)
                })
                .map(|rp| rp.host_port)
                .unwrap_or(p.container_port);
            if let Ok(port) = u16::try_from(host) {
                ports.push(EndpointPort { name: p.name.clone(), port, protocol: p.protocol });
            }
        }
        // Ports the runtime reports that the spec does not declare (e.g. the process runtime's `PORT`).
        if let Some(r) = reported {
            for rp in &r.ports {
                let declared =
                    c.ports.iter().any(|p| p.container_port == rp.container_port && p.protocol == rp.protocol);
                if !declared {
                    if let Ok(port) = u16::try_from(rp.host_port) {
                        ports.push(EndpointPort { name: rp.name.clone(), port, protocol: rp.protocol });
                    }
                }
            }
        }
    }
    let node_ok = node.is_none_or(Node::is_ready);
    let terminating = pod.is_terminating();
    let serving = pod.is_ready() && node_ok;
    Some(Endpoint {
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        address,
        ports,
        labels: pod.metadata.labels.clone(),
        ready: serving && !terminating,
        serving,
        terminating,
        node: Some(node_name),
        zone: node.and_then(|n| n.metadata.labels.get(ZONE_LABEL).cloned()),
        weight: 100,
    })
}

/// Endpoints for every pod selected by at least one of `services`.
pub fn endpoints_for(services: &[Service], pods: &[Pod], nodes: &[Node]) -> Vec<Endpoint> {
    let nodes: HashMap<&str, &Node> = nodes.iter().map(|n| (n.metadata.name.as_str(), n)).collect();
    pods.iter()
        .filter(|p| services.iter().any(|s| selects(s, p)))
        .filter_map(|p| {
            let node = p.spec.node_name.as_deref().and_then(|n| nodes.get(n).copied());
            pod_endpoint(p, node)
        })
        .collect()
}

pub fn service_objects(service: &Service) -> Vec<Object> {
    vec![Object::Service(Arc::new(service.to_discovery()))]
}

pub fn route_objects(route: &Route) -> Vec<Object> {
    route.to_discovery().into_iter().map(|r| Object::Route(Arc::new(r))).collect()
}

/// A `kubernetes.io/tls` Secret as a certificate (PEM `tls.crt` and `tls.key`); nothing for other Secrets or
/// when the PEM is not UTF-8.
pub fn secret_objects(secret: &Secret) -> Vec<Object> {
    if secret.type_ != "kubernetes.io/tls" {
        return Vec::new();
    }
    let pem = |key: &str| secret.get(key).and_then(|b| String::from_utf8(b).ok());
    match (pem("tls.crt"), pem("tls.key")) {
        (Some(cert_pem), Some(key_pem)) => {
            vec![Object::Certificate(Arc::new(discovery::Certificate {
                namespace: secret.metadata.namespace.clone(),
                name: secret.metadata.name.clone(),
                cert_pem,
                key_pem,
            }))]
        }
        _ => Vec::new(),
    }
}

/// Everything the registry should hold.
pub fn desired_objects(
    services: &[Service],
    routes: &[Route],
    secrets: &[Secret],
    pods: &[Pod],
    nodes: &[Node],
) -> BTreeMap<ObjectKey, Object> {
    let mut out = BTreeMap::new();
    let objects = services
        .iter()
        .flat_map(service_objects)
        .chain(routes.iter().flat_map(route_objects))
        .chain(secrets.iter().flat_map(secret_objects))
        .chain(endpoints_for(services, pods, nodes).into_iter().map(|e| Object::Endpoint(Arc::new(e))));
    for o in objects {
        out.insert(o.key(), o);
    }
    out
}

/// The changes that make `current` hold exactly `desired`: puts for new or different objects, deletes for
/// objects no longer desired. Unchanged objects produce nothing.
pub fn diff(current: &Snapshot, desired: &BTreeMap<ObjectKey, Object>) -> Vec<Change> {
    let mut changes = Vec::new();
    let existing = current
        .services()
        .map(|s| Object::Service(s.clone()))
        .chain(current.routes().map(|r| Object::Route(r.clone())))
        .chain(current.certificates().map(|c| Object::Certificate(c.clone())))
        .chain(current.all_endpoints().map(|e| Object::Endpoint(e.clone())));
    for o in existing {
        if !desired.contains_key(&o.key()) {
            changes.push(Change::Delete(o.key()));
        }
    }
    for (k, o) in desired {
        if current.get(k).as_ref() != Some(o) {
            changes.push(Change::Put(o.clone()));
        }
    }
    changes
}
