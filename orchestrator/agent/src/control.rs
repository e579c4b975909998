//! What the agent needs from the control plane, as a trait, plus an in-memory implementation for tests
//! and in-process use.
//!
//! The agent never touches the store: it registers its node, posts heartbeats and pod status, watches pods
//! and reads ConfigMaps/Secrets through [`ControlPlane`]. The HTTP implementation over the API client lives
//! beside the client; [`MemoryControlPlane`] keeps everything in maps and emits watch events like the API
//! server does (including `MODIFIED` for status writes, and `DELETED`/`ADDED` when a pod leaves/enters a
//! node-filtered watch).

use futures::stream::BoxStream;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::broadcast;

/// A pod watch event.
#[derive(Debug, Clone, PartialEq)]
pub enum PodEvent {
    /// Added or modified: the pod's current object.
    Upsert(Value),
    Deleted(Value),
    /// Nothing changed up to this store revision (a watch bookmark): resume from here.
    Progress(u64),
}

impl PodEvent {
    /// The store revision this event brings the watcher to, when the control plane has revisions
    /// (`metadata.resourceVersion`).
    pub fn revision(&self) -> Option<u64> {
        match self {
            PodEvent::Upsert(p) | PodEvent::Deleted(p) => {
                p.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|v| v.parse().ok())
            }
            PodEvent::Progress(r) => Some(*r),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict writing {0}")]
    Conflict(String),
    /// A watch cannot resume from the revision asked for (history compacted, or none kept): list again.
    #[error("{0}: resume revision expired")]
    Expired(String),
}

pub type PodEvents = BoxStream<'static, Result<PodEvent, ControlPlaneError>>;

#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Create the node, or update its labels/spec-free parts when it exists (keeping what others wrote).
    async fn register_node(&self, node: &Value) -> Result<(), ControlPlaneError>;
    /// Replace the node's status (heartbeat, capacity, endpoint).
    async fn update_node_status(&self, name: &str, status: &Value) -> Result<(), ControlPlaneError>;
    /// The pods bound to `node`, or every pod (`None`: only an agent that claims unbound pods needs them, and
    /// only an admin credential may list them).
    async fn list_pods(&self, node: Option<&str>) -> Result<Vec<Value>, ControlPlaneError>;
    /// Changes to pods, of the pods bound to `node` (or of every pod): from now on, or after store revision
    /// `since` ([`PodEvent::revision`] of the last event seen; [`ControlPlaneError::Expired`] when that is no
    /// longer possible). A pod that leaves the node comes as [`PodEvent::Deleted`], one that arrives as an
    /// upsert. The stream may end or fail; the agent then resumes from the last revision it saw, or lists and
    /// watches again.
    async fn watch_pods(&self, node: Option<&str>, since: Option<u64>) -> Result<PodEvents, ControlPlaneError>;
    async fn update_pod_status(&self, namespace: &str, name: &str, status: &Value) -> Result<(), ControlPlaneError>;
    /// Set `spec.nodeName` of an unbound pod (compare-and-swap). `Ok(false)` when someone else bound it.
    async fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> Result<bool, ControlPlaneError>;
    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError>;
    /// Decoded secret values.
    async fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError>;
    /// The node's serving certificate (PEM) for the PKCS#10 request `csr_pem`, signed by the cluster CA.
    async fn node_certificate(&self, node: &str, csr_pem: &str) -> Result<String, ControlPlaneError>;
}

fn key_of(pod: &Value) -> (String, String) {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("default");
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    (ns.to_string(), name.to_string())
}

fn on_node(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

/// What a watch of the pods on `node` sends for `event`, given the pods it has sent as on the node
/// (`matching`), as the API server's field-selected watch does.
fn select(event: PodEvent, node: &str, matching: &mut HashSet<(String, String)>) -> Option<PodEvent> {
    match event {
        PodEvent::Upsert(p) if on_node(&p, node) => {
            matching.insert(key_of(&p));
            Some(PodEvent::Upsert(p))
        }
        PodEvent::Upsert(p) => matching.remove(&key_of(&p)).then_some(PodEvent::Deleted(p)),
        PodEvent::Deleted(p) => (matching.remove(&key_of(&p)) || on_node(&p, node)).then_some(PodEvent::Deleted(p)),
        PodEvent::Progress(r) => Some(PodEvent::Progress(r)),
    }
}

#[derive(Default)]
struct Mem {
    pods: HashMap<(String, String), Value>,
    nodes: HashMap<String, Value>,
    config_maps: HashMap<(String, String), BTreeMap<String, String>>,
    secrets: HashMap<(String, String), BTreeMap<String, String>>,
    status_writes: u64,
    ca: Option<Arc<pki::ClusterCa>>,
}

/// An in-memory control plane: pods, nodes, ConfigMaps and Secrets in maps, events on a broadcast channel.
/// It keeps no history (a watch cannot resume: [`ControlPlaneError::Expired`]) and can be made unavailable
/// ([`MemoryControlPlane::set_available`]) to play an outage of every server.
#[derive(Clone)]
pub struct MemoryControlPlane {
    mem: Arc<Mutex<Mem>>,
    events: broadcast::Sender<PodEvent>,
    available: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for MemoryControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryControlPlane {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        let available = Arc::new(tokio::sync::watch::Sender::new(true));
        Self { mem: Arc::new(Mutex::new(Mem::default())), events, available }
    }

    /// Play an outage of the whole control plane (`false`): every call fails with
    /// [`ControlPlaneError::Unavailable`] and open watches end with it; the state is kept (and tests may still
    /// change it through the inherent methods) until `true` ends the outage.
    pub fn set_available(&self, up: bool) {
        self.available.send_replace(up);
    }

    fn check(&self, what: &str) -> Result<(), ControlPlaneError> {
        if *self.available.borrow() {
            Ok(())
        } else {
            Err(ControlPlaneError::Unavailable(format!("{what}: control plane unavailable")))
        }
    }

    /// Create or replace a pod (a uid is made up when it has none).
    pub fn put_pod(&self, mut pod: Value) {
        if pod.pointer("/metadata/uid").and_then(Value::as_str).is_none_or(str::is_empty) {
            let (ns, name) = key_of(&pod);
            if let Some(m) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("uid".into(), Value::String(format!("uid-{ns}-{name}")));
            }
        }
        self.mem.lock().pods.insert(key_of(&pod), pod.clone());
        let _ = self.events.send(PodEvent::Upsert(pod));
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let removed = self.mem.lock().pods.remove(&(namespace.to_string(), name.to_string()));
        if let Some(p) = removed {
            let _ = self.events.send(PodEvent::Deleted(p));
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.mem.lock().pods.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.mem.lock().nodes.get(name).cloned()
    }

    pub fn put_config_map(&self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        self.mem.lock().config_maps.insert((namespace.into(), name.into()), data);
    }

    pub fn put_secret(&self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        self.mem.lock().secrets.insert((namespace.into(), name.into()), data);
    }

    pub fn status_writes(&self) -> u64 {
        self.mem.lock().status_writes
    }

    /// Sign node certificates with `ca` from now on (until then, [`ControlPlane::node_certificate`] fails).
    pub fn set_ca(&self, ca: Arc<pki::ClusterCa>) {
        self.mem.lock().ca = Some(ca);
    }
}

#[async_trait::async_trait]
impl ControlPlane for MemoryControlPlane {
    async fn register_node(&self, node: &Value) -> Result<(), ControlPlaneError> {
        self.check("register node")?;
        let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let mut mem = self.mem.lock();
        let entry = mem.nodes.entry(name).or_insert_with(|| node.clone());
        if let (Some(dst), Some(src)) = (entry.get_mut("metadata"), node.get("metadata")) {
            *dst = src.clone();
        }
        Ok(())
    }

    async fn update_node_status(&self, name: &str, status: &Value) -> Result<(), ControlPlaneError> {
        self.check("node status")?;
        let mut mem = self.mem.lock();
        let node = mem.nodes.get_mut(name).ok_or_else(|| ControlPlaneError::NotFound(format!("nodes/{name}")))?;
        if let Some(o) = node.as_object_mut() {
            o.insert("status".into(), status.clone());
        }
        Ok(())
    }

    async fn list_pods(&self, node: Option<&str>) -> Result<Vec<Value>, ControlPlaneError> {
        self.check("list pods")?;
        let mem = self.mem.lock();
        Ok(mem.pods.values().filter(|p| node.is_none_or(|n| on_node(p, n))).cloned().collect())
    }

    async fn watch_pods(&self, node: Option<&str>, since: Option<u64>) -> Result<PodEvents, ControlPlaneError> {
        self.check("watch pods")?;
        if since.is_some() {
            return Err(ControlPlaneError::Expired("watch pods: the memory control plane keeps no history".into()));
        }
        let mut up = self.available.subscribe();
        up.mark_unchanged();
        // Subscribing under the lock: a write after this point is in `rx`, one before it in `matching`.
        let (rx, matching) = {
            let mem = self.mem.lock();
            let matching: HashSet<_> = match node {
                Some(n) => mem.pods.values().filter(|p| on_node(p, n)).map(key_of).collect(),
                None => HashSet::new(),
            };
            (self.events.subscribe(), matching)
        };
        let node = node.map(str::to_string);
        let s = futures::stream::unfold(Some((rx, node, matching, up)), |state| async move {
            let (mut rx, node, mut matching, mut up) = state?;
            loop {
                // An outage wins over pending events: nothing reaches a watcher while the plane is down.
                let received = tokio::select! {
                    biased;
                    _ = up.wait_for(|up| !*up) => None,
                    r = rx.recv() => Some(r),
                };
                let Some(received) = received.filter(|_| *up.borrow()) else {
                    let e = ControlPlaneError::Unavailable("watch pods: control plane unavailable".into());
                    return Some((Err(e), None));
                };
                let event = match received {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e = ControlPlaneError::Unavailable(format!("watch lagged by {n} events"));
                        return Some((Err(e), Some((rx, node, matching, up))));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                let selected = match &node {
                    Some(n) => select(event, n, &mut matching),
                    None => Some(event),
                };
                if let Some(e) = selected {
                    return Some((Ok(e), Some((rx, node, matching, up))));
                }
            }
        });
        Ok(Box::pin(s))
    }

    async fn update_pod_status(&self, namespace: &str, name: &str, status: &Value) -> Result<(), ControlPlaneError> {
        self.check("pod status")?;
        let pod = {
            let mut mem = self.mem.lock();
            mem.status_writes += 1;
            let pod = mem
                .pods
                .get_mut(&(namespace.to_string(), name.to_string()))
                .ok_or_else(|| ControlPlaneError::NotFound(format!("pods/{namespace}/{name}")))?;
            if let Some(o) = pod.as_object_mut() {
                o.insert("status".into(), status.clone());
            }
            pod.clone()
        };
        let _ = self.events.send(PodEvent::Upsert(pod));
        Ok(())
    }

    async fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> Result<bool, ControlPlaneError> {
        self.check("bind pod")?;
        let pod = {
            let mut mem = self.mem.lock();
            let Some(pod) = mem.pods.get_mut(&(namespace.to_string(), name.to_string())) else {
                return Err(ControlPlaneError::NotFound(format!("pods/{namespace}/{name}")));
            };
            if pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Ok(false);
            }
            if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("nodeName".into(), Value::String(node.to_string()));
            }
            pod.clone()
        };
        let _ = self.events.send(PodEvent::Upsert(pod));
        Ok(true)
    }

    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError> {
        self.check("config map")?;
        Ok(self.mem.lock().config_maps.get(&(namespace.to_string(), name.to_string())).cloned())
    }

    async fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError> {
        self.check("secret")?;
        Ok(self.mem.lock().secrets.get(&(namespace.to_string(), name.to_string())).cloned())
    }

    async fn node_certificate(&self, node: &str, csr_pem: &str) -> Result<String, ControlPlaneError> {
        let what = format!("nodes/{node}/certificate");
        self.check(&what)?;
        let ca = self.mem.lock().ca.clone().ok_or_else(|| ControlPlaneError::Unavailable(format!("{what}: no CA")))?;
        ca.sign_server_csr(csr_pem, node).map_err(|e| ControlPlaneError::Unavailable(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn pod(name: &str, node: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": {"nodeName": node}})
    }

    #[tokio::test]
    async fn a_node_watch_sees_pods_arrive_as_upserts_and_leave_as_deletions() {
        let cp = MemoryControlPlane::new();
        cp.put_pod(pod("here", "a"));
        cp.put_pod(pod("there", "b"));
        let listed = cp.list_pods(Some("a")).await.unwrap();
        assert_eq!(listed, [pod("here", "a")]);
        assert_eq!(cp.list_pods(None).await.unwrap().len(), 2);

        let mut watch = cp.watch_pods(Some("a"), None).await.unwrap();
        cp.put_pod(pod("here", "b"));
        cp.put_pod(pod("elsewhere", "c"));
        cp.put_pod(pod("there", "a"));
        cp.delete_pod("default", "elsewhere");
        cp.delete_pod("default", "there");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(
                tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap(),
            );
        }
        assert_eq!(
            seen,
            [
                PodEvent::Deleted(pod("here", "b")),
                PodEvent::Upsert(pod("there", "a")),
                PodEvent::Deleted(pod("there", "a"))
            ]
        );
    }

    #[tokio::test]
    async fn node_certificates_need_a_ca_and_name_the_node() {
        let cp = MemoryControlPlane::new();
        let (csr, _key) = pki::generate_csr("n1").unwrap();
        assert!(cp.node_certificate("n1", &csr).await.is_err(), "no CA yet");
        cp.set_ca(Arc::new(pki::ClusterCa::generate("berth-ca").unwrap()));
        assert!(cp.node_certificate("n1", &csr).await.unwrap().contains("BEGIN CERTIFICATE"));
    }
}
