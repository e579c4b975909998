//! What the agent needs from the control plane, as a trait, plus an in-memory implementation for tests
//! and in-process use.
//!
//! The agent never touches the store: it registers its node, posts heartbeats and pod status, watches pods
//! and reads ConfigMaps/Secrets through [`ControlPlane`]. The HTTP implementation over the API client lives
//! beside the client; [`MemoryControlPlane`] keeps everything in maps and emits watch events like the API
//! server does (including `MODIFIED` for status writes).

use futures::stream::BoxStream;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::broadcast;

/// A pod watch event.
#[derive(Debug, Clone, PartialEq)]
pub enum PodEvent {
    /// Added or modified: the pod's current object.
    Upsert(Value),
    Deleted(Value),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict writing {0}")]
    Conflict(String),
}

pub type PodEvents = BoxStream<'static, Result<PodEvent, ControlPlaneError>>;

#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Create the node, or update its labels/spec-free parts when it exists (keeping what others wrote).
    async fn register_node(&self, node: &Value) -> Result<(), ControlPlaneError>;
    /// Replace the node's status (heartbeat, capacity, endpoint).
    async fn update_node_status(&self, name: &str, status: &Value) -> Result<(), ControlPlaneError>;
    /// Every pod (the agent filters by node itself).
    async fn list_pods(&self) -> Result<Vec<Value>, ControlPlaneError>;
    /// Changes to pods from now on. The stream may end; the agent then lists and watches again.
    async fn watch_pods(&self) -> Result<PodEvents, ControlPlaneError>;
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
}

fn key_of(pod: &Value) -> (String, String) {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("default");
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    (ns.to_string(), name.to_string())
}

#[derive(Default)]
struct Mem {
    pods: HashMap<(String, String), Value>,
    nodes: HashMap<String, Value>,
    config_maps: HashMap<(String, String), BTreeMap<String, String>>,
    secrets: HashMap<(String, String), BTreeMap<String, String>>,
    status_writes: u64,
}

/// An in-memory control plane: pods, nodes, ConfigMaps and Secrets in maps, events on a broadcast channel.
#[derive(Clone)]
pub struct MemoryControlPlane {
    mem: Arc<Mutex<Mem>>,
    events: broadcast::Sender<PodEvent>,
}

impl Default for MemoryControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryControlPlane {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self { mem: Arc::new(Mutex::new(Mem::default())), events }
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
}

#[async_trait::async_trait]
impl ControlPlane for MemoryControlPlane {
    async fn register_node(&self, node: &Value) -> Result<(), ControlPlaneError> {
        let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let mut mem = self.mem.lock();
        let entry = mem.nodes.entry(name).or_insert_with(|| node.clone());
        if let (Some(dst), Some(src)) = (entry.get_mut("metadata"), node.get("metadata")) {
            *dst = src.clone();
        }
        Ok(())
    }

    async fn update_node_status(&self, name: &str, status: &Value) -> Result<(), ControlPlaneError> {
        let mut mem = self.mem.lock();
        let node = mem.nodes.get_mut(name).ok_or_else(|| ControlPlaneError::NotFound(format!("nodes/{name}")))?;
        if let Some(o) = node.as_object_mut() {
            o.insert("status".into(), status.clone());
        }
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<Value>, ControlPlaneError> {
        Ok(self.mem.lock().pods.values().cloned().collect())
    }

    async fn watch_pods(&self) -> Result<PodEvents, ControlPlaneError> {
        let rx = self.events.subscribe();
        let s = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((Ok(e), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Some((Err(ControlPlaneError::Unavailable(format!("watch lagged by {n} events"))), rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Box::pin(s))
    }

    async fn update_pod_status(&self, namespace: &str, name: &str, status: &Value) -> Result<(), ControlPlaneError> {
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
        Ok(self.mem.lock().config_maps.get(&(namespace.to_string(), name.to_string())).cloned())
    }

    async fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError> {
        Ok(self.mem.lock().secrets.get(&(namespace.to_string(), name.to_string())).cloned())
    }
}
