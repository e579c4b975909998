//! [`ControlPlane`] over the API server's HTTP client: how a `berth agent` process talks to `berth server`.

use super::control::{ControlPlane, ControlPlaneError, PodEvent, PodEvents};
use super::spec::{config_map_values, secret_values};
use client::{Client, ClientError};
use futures::StreamExt;
use model::Kind;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub struct HttpControlPlane {
    client: Client,
}

impl HttpControlPlane {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn err(what: &str, e: ClientError) -> ControlPlaneError {
    if e.is_not_found() {
        ControlPlaneError::NotFound(what.to_string())
    } else if e.is_conflict() {
        ControlPlaneError::Conflict(what.to_string())
    } else {
        ControlPlaneError::Unavailable(format!("{what}: {e}"))
    }
}

#[async_trait::async_trait]
impl ControlPlane for HttpControlPlane {
    async fn register_node(&self, node: &Value) -> Result<(), ControlPlaneError> {
        let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let what = format!("nodes/{name}");
        for _ in 0..5 {
            match self.client.get(Kind::Node, "", name).await {
                Err(e) if e.is_not_found() => match self.client.create(Kind::Node, "", node).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_conflict() || matches!(&e, ClientError::Api { code: 409, .. }) => continue,
                    Err(e) => return Err(err(&what, e)),
                },
                Err(e) => return Err(err(&what, e)),
                Ok(mut existing) => {
                    // Keep what others set (taints, spec); take our labels.
                    let labels = node.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}));
                    let mut merged = existing.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}));
                    if let (Some(m), Some(l)) = (merged.as_object_mut(), labels.as_object()) {
                        for (k, v) in l {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                    if existing.pointer("/metadata/labels") == Some(&merged) {
                        return Ok(());
                    }
                    if let Some(meta) = existing.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("labels".into(), merged);
                    }
                    match self.client.update(Kind::Node, "", name, &existing).await {
                        Ok(_) => return Ok(()),
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(err(&what, e)),
                    }
                }
            }
        }
        Err(ControlPlaneError::Conflict(what))
    }

    async fn update_node_status(&self, name: &str, status: &Value) -> Result<(), ControlPlaneError> {
        self.client
            .update_status(Kind::Node, "", name, &json!({"status": status}))
            .await
            .map(|_| ())
            .map_err(|e| err(&format!("nodes/{name}/status"), e))
    }

    async fn list_pods(&self, node: Option<&str>) -> Result<Vec<Value>, ControlPlaneError> {
        match node {
            Some(n) => self.client.list_pods_on_node(n).await,
            None => self.client.list(Kind::Pod, None, None).await,
        }
        .map_err(|e| err("pods", e))
    }

    async fn watch_pods(&self, node: Option<&str>, since: Option<u64>) -> Result<PodEvents, ControlPlaneError> {
        let watch = match node {
            Some(n) => self.client.watch_pods_on_node(n, since).await,
            None => self.client.watch(Kind::Pod, None, since, None).await,
        }
        .map_err(|e| err("watch pods", e))?;
        // With a node's field selector, `DELETED` also means "left the node" and `ADDED` "arrived on it".
        // Bookmarks become progress, so that the agent resumes from them on another server.
        Ok(Box::pin(watch.with_bookmarks().map(|ev| match ev {
            Ok(ev) => {
                match ev.kind.as_str() {
                    "ADDED" | "MODIFIED" => Ok(PodEvent::Upsert(ev.object)),
                    "DELETED" => Ok(PodEvent::Deleted(ev.object)),
                    "BOOKMARK" => ev.revision().map(PodEvent::Progress).ok_or_else(|| {
                        ControlPlaneError::Unavailable("watch pods: a bookmark without a revision".into())
                    }),
                    other => {
                        let message = ev.object.get("message").and_then(Value::as_str).unwrap_or("");
                        let what = format!("watch pods: {other}: {message}");
                        if ev.object.get("code").and_then(Value::as_u64) == Some(410) {
                            Err(ControlPlaneError::Expired(what))
                        } else {
                            Err(ControlPlaneError::Unavailable(what))
                        }
                    }
                }
            }
            Err(e) => Err(err("watch pods", e)),
        })))
    }

    async fn update_pod_status(&self, namespace: &str, name: &str, status: &Value) -> Result<(), ControlPlaneError> {
        self.client
            .update_status(Kind::Pod, namespace, name, &json!({"status": status}))
            .await
            .map(|_| ())
            .map_err(|e| err(&format!("pods/{namespace}/{name}/status"), e))
    }

    async fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> Result<bool, ControlPlaneError> {
        let what = format!("pods/{namespace}/{name}");
        for _ in 0..5 {
            let mut pod = self.client.get(Kind::Pod, namespace, name).await.map_err(|e| err(&what, e))?;
            if pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Ok(false);
            }
            match pod.get_mut("spec").and_then(Value::as_object_mut) {
                Some(spec) => {
                    spec.insert("nodeName".into(), Value::String(node.to_string()));
                }
                None => return Ok(false),
            }
            match self.client.update(Kind::Pod, namespace, name, &pod).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(err(&what, e)),
            }
        }
        Ok(false)
    }

    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError> {
        match self.client.get(Kind::ConfigMap, namespace, name).await {
            Ok(v) => Ok(Some(config_map_values(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(err(&format!("configmaps/{namespace}/{name}"), e)),
        }
    }

    async fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ControlPlaneError> {
        match self.client.get(Kind::Secret, namespace, name).await {
            Ok(v) => Ok(Some(secret_values(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            // Never echo a secret: the error names only the object.
            Err(e) => Err(err(&format!("secrets/{namespace}/{name}"), e)),
        }
    }

    async fn node_certificate(&self, node: &str, csr_pem: &str) -> Result<String, ControlPlaneError> {
        self.client.node_certificate(node, csr_pem).await.map_err(|e| err(&format!("nodes/{node}/certificate"), e))
    }
}
