//! The harness's own API client: plain requests to the replicas' addresses with the cluster CA and the admin
//! token, trying the replicas in turn. It is deliberately not `client::Client`, so what the harness observes
//! does not depend on the client failover under test.

use serde_json::Value;
use std::time::{Duration, Instant};

/// One answer: status and JSON body (`Null` when the body was not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Which replica answered.
    pub server: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn resource_version(&self) -> Option<u64> {
        self.body["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok())
    }
}

#[derive(Clone)]
pub struct Api {
    pub servers: Vec<String>,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(servers: Vec<String>, ca: &pki::CaCert, token: String, timeout: Duration) -> Api {
        let tls = pki::client_config(ca, None).expect("TLS client config");
        let http = test_support::http()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(1))
            .timeout(timeout)
            .build()
            .expect("reqwest client");
        Api { servers, token, http }
    }

    /// One request to one replica; `Err` for a transport failure (connect, timeout, reset).
    pub async fn one(&self, server: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut r = self.http.request(method, format!("{server}{path}")).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.map_err(|e| format!("{server}{path}: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| format!("{server}{path}: body: {e}"))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body, server: server.to_string() })
    }

    /// GET `url` (any host) without credentials: status and body, `None` on a transport failure.
    pub async fn raw(&self, url: &str) -> Option<(u16, String)> {
        let resp = self.http.get(url).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// A request tried on each replica in turn until one answers without a transport error or a 5xx (the last
    /// answer or error when none does). Only for idempotent requests and creates whose 409 the caller handles.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        let mut last = Err("no servers".to_string());
        for s in &self.servers {
            last = self.one(s, method, path, body).await;
            match &last {
                Ok(a) if a.status < 500 => return last,
                _ => {}
            }
        }
        last
    }

    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        self.call("GET", path, None).await
    }

    /// The `items` of a list.
    pub async fn items(&self, path: &str) -> Vec<Value> {
        match self.get(path).await {
            Ok(a) if a.ok() => a.body["items"].as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Apply `object` (create, or replace at the current resourceVersion), retrying conflicts and unavailable
    /// replicas until `timeout`.
    pub async fn apply(&self, path_collection: &str, object: &Value, timeout: Duration) -> Result<Answer, String> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let item = format!("{path_collection}/{name}");
            match self.get(&item).await {
                Ok(a) if a.status == 404 => match self.call("POST", path_collection, Some(object)).await {
                    Ok(a) if a.ok() => return Ok(a),
                    Ok(a) => last = format!("create {item}: {} {}", a.status, a.body),
                    Err(e) => last = e,
                },
                Ok(a) if a.ok() => {
                    let mut o = object.clone();
                    o["metadata"]["resourceVersion"] = a.body["metadata"]["resourceVersion"].clone();
                    match self.call("PUT", &item, Some(&o)).await {
                        Ok(a) if a.ok() => return Ok(a),
                        Ok(a) => last = format!("update {item}: {} {}", a.status, a.body),
                        Err(e) => last = e,
                    }
                }
                Ok(a) => last = format!("get {item}: {} {}", a.status, a.body),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last)
    }

    /// Set a Deployment's `spec.replicas` (read-modify-write at the read revision, retried until `timeout`).
    pub async fn scale(&self, ns: &str, name: &str, replicas: u32, timeout: Duration) -> Result<Answer, String> {
        let path = format!("/api/v1/namespaces/{ns}/deployments/{name}");
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.get(&path).await {
                Ok(a) if a.ok() => {
                    let mut d = a.body.clone();
                    d["spec"]["replicas"] = replicas.into();
                    match self.call("PUT", &path, Some(&d)).await {
                        Ok(a) if a.ok() => return Ok(a),
                        Ok(a) => last = format!("{} {}", a.status, a.body),
                        Err(e) => last = e,
                    }
                }
                Ok(a) => last = format!("{} {}", a.status, a.body),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("scale {ns}/{name} to {replicas}: {last}"))
    }
}
