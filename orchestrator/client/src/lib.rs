//! A typed-enough HTTP client of the API server, used by the CLI and by node agents, the registry mirror, and
//! the join flow that turns a join token into the cluster CA and a credential.
//!
//! TLS: an `https://` server is reached only with the cluster CA ([`Client::with_ca`]); there is no insecure
//! mode. Tokens travel only in the `Authorization` header and never appear in errors or `Debug` output.

pub mod join;
pub mod mirror;

pub use join::{join, JoinError, Joined};

use futures::{Stream, StreamExt};
use model::Kind;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the API server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error `Status`.
    #[error("{message}")]
    Api { code: u16, reason: String, message: String },
    #[error("unexpected answer from the API server: {0}")]
    Protocol(String),
    #[error("{url}: https:// needs the cluster CA: give the client the CA certificate (ca.crt)")]
    NeedsCa { url: String },
    #[error("TLS configuration for {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: pki::PkiError,
    },
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { code: 404, .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, .. })
    }
}

/// The outcome of a server-side apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// `created`, `configured` or `unchanged`.
    pub result: String,
    pub object: Value,
    pub warnings: Vec<String>,
}

/// One watch event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `ADDED`, `MODIFIED`, `DELETED` or `ERROR`.
    pub kind: String,
    pub object: Value,
}

/// What part of a pod's logs to read (see [`Client::pod_logs`]).
#[derive(Debug, Clone, Default)]
pub struct LogRequest {
    /// The container (default: the pod's first).
    pub container: Option<String>,
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// The previous run of the container (after a restart).
    pub previous: bool,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Whether `url` asks for TLS (scheme compared as URLs do, without case).
pub fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// A reqwest builder with the crypto provider installed, as every reqwest client of this crate needs.
pub(crate) fn http_builder() -> reqwest::ClientBuilder {
    pki::install_crypto_provider();
    reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).tcp_nodelay(true)
}

impl Client {
    /// A client of a plain-HTTP server. An `https://` URL is refused: it needs [`Client::with_ca`].
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        if is_https(server) {
            return Err(ClientError::NeedsCa { url: server.to_string() });
        }
        Self::build(server, token, http_builder())
    }

    /// A client that trusts only the cluster CA `ca` for an `https://` server (a plain `http://` URL stays
    /// plain).
    pub fn with_ca(server: &str, ca: &pki::CaCert, token: Option<String>) -> Result<Self, ClientError> {
        let tls = pki::client_config(ca, None).map_err(|e| ClientError::Tls { url: server.to_string(), source: e })?;
        Self::build(server, token, http_builder().tls_backend_preconfigured(tls))
    }

    fn build(server: &str, token: Option<String>, builder: reqwest::ClientBuilder) -> Result<Self, ClientError> {
        let http = builder.build().map_err(|e| ClientError::Connect { url: server.to_string(), source: e })?;
        Ok(Self { base: server.trim_end_matches('/').to_string(), token, http })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// The collection path of `kind` in `namespace` (`None`: every namespace, or cluster-scoped).
    pub fn collection_path(kind: Kind, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if kind.namespaced() => format!("/api/v1/namespaces/{ns}/{}", kind.plural()),
            _ => format!("/api/v1/{}", kind.plural()),
        }
    }

    fn object_path(kind: Kind, namespace: &str, name: &str) -> String {
        format!("{}/{name}", Self::collection_path(kind, Some(namespace)))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = r.send().await.map_err(|e| ClientError::Connect { url: self.base.clone(), source: e })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ClientError::Connect { url: self.base.clone(), source: e })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()));
        }
        Err(api_error(status.as_u16(), &bytes))
    }

    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::GET, &Self::object_path(kind, namespace, name))).await
    }

    /// List objects; `namespace: None` lists every namespace.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        self.list_selected(kind, namespace, selector, None).await
    }

    /// The pods bound to `node` in every namespace (`fieldSelector=spec.nodeName=NODE`): all a node's
    /// credential may list.
    pub async fn list_pods_on_node(&self, node: &str) -> Result<Vec<Value>, ClientError> {
        self.list_selected(Kind::Pod, None, None, Some(&node_selector(node))).await
    }

    async fn list_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        let r = selected(self.request(reqwest::Method::GET, &Self::collection_path(kind, namespace)), labels, fields);
        let list = self.send(r).await?;
        match list.get("items") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(ClientError::Protocol("list answer has no items".into())),
        }
    }

    pub async fn create(&self, kind: Kind, namespace: &str, object: &Value) -> Result<Value, ClientError> {
        let ns = if kind.namespaced() { Some(namespace) } else { None };
        self.send(self.request(reqwest::Method::POST, &Self::collection_path(kind, ns)).json(object)).await
    }

    /// Replace an object (compare-and-swap when `object` carries `metadata.resourceVersion`).
    pub async fn update(&self, kind: Kind, namespace: &str, name: &str, object: &Value) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::PUT, &Self::object_path(kind, namespace, name)).json(object)).await
    }

    /// Replace only the status of an object.
    pub async fn update_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: &Value,
    ) -> Result<Value, ClientError> {
        let path = format!("{}/status", Self::object_path(kind, namespace, name));
        self.send(self.request(reqwest::Method::PUT, &path).json(object)).await
    }

    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &Self::object_path(kind, namespace, name))).await
    }

    /// A Deployment's revision records, oldest first.
    pub async fn deployment_revisions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<model::RevisionRecord>, ClientError> {
        let path = format!("{}/revisions", Self::object_path(Kind::Deployment, namespace, name));
        let list = self.send(self.request(reqwest::Method::GET, &path)).await?;
        let items =
            list.get("items").cloned().ok_or_else(|| ClientError::Protocol("list answer has no items".into()))?;
        serde_json::from_value(items).map_err(|e| ClientError::Protocol(format!("revision records: {e}")))
    }

    /// Server-side apply; `dry_run` validates and reports without writing.
    pub async fn apply(&self, object: &Value, dry_run: bool) -> Result<Applied, ClientError> {
        let mut r = self.request(reqwest::Method::POST, "/api/v1/apply").json(object);
        if dry_run {
            r = r.query(&[("dryRun", "true")]);
        }
        let v = self.send(r).await?;
        Ok(Applied {
            result: v.get("result").and_then(Value::as_str).unwrap_or("").to_string(),
            object: v.get("object").cloned().unwrap_or(Value::Null),
            warnings: v
                .get("warnings")
                .and_then(Value::as_array)
                .map(|w| w.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        })
    }

    /// Watch a collection from `resource_version` (or from now, after the current objects as `ADDED`).
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        resource_version: Option<u64>,
        selector: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Event, ClientError>> + use<>, ClientError> {
        self.watch_selected(kind, namespace, resource_version, selector, None).await
    }

    /// Watch the pods bound to `node`: a pod that arrives on the node comes as `ADDED`, one that leaves it as
    /// `DELETED`.
    pub async fn watch_pods_on_node(
        &self,
        node: &str,
        resource_version: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Event, ClientError>> + use<>, ClientError> {
        self.watch_selected(Kind::Pod, None, resource_version, None, Some(&node_selector(node))).await
    }

    async fn watch_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        resource_version: Option<u64>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Event, ClientError>> + use<>, ClientError> {
        let mut r =
            self.request(reqwest::Method::GET, &Self::collection_path(kind, namespace)).query(&[("watch", "true")]);
        if let Some(rv) = resource_version {
            r = r.query(&[("resourceVersion", rv.to_string())]);
        }
        let r = selected(r, labels, fields);
        let response = r.send().await.map_err(|e| ClientError::Connect { url: self.base.clone(), source: e })?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(api_error(status.as_u16(), &bytes));
        }
        Ok(ndjson(Box::pin(response.bytes_stream())).map(|line| {
            let line: Vec<u8> = line?;
            let v: Value = serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            Ok(Event {
                kind: v.get("type").and_then(Value::as_str).unwrap_or("").to_string(),
                object: v.get("object").cloned().unwrap_or(Value::Null),
            })
        }))
    }

    /// A pod's logs through the API server (`GET .../pods/NAME/log`), which relays them from the agent of the
    /// pod's node; with `follow` the stream stays open while the container runs.
    pub async fn pod_logs(
        &self,
        namespace: &str,
        name: &str,
        opts: &LogRequest,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, ClientError>> + use<>, ClientError> {
        let mut r = self
            .request(reqwest::Method::GET, &format!("{}/log", Self::object_path(Kind::Pod, namespace, name)))
            .query(&[("follow", opts.follow), ("previous", opts.previous)]);
        if let Some(c) = &opts.container {
            r = r.query(&[("container", c)]);
        }
        if let Some(t) = opts.tail_lines {
            r = r.query(&[("tailLines", t)]);
        }
        let response = r.send().await.map_err(|e| ClientError::Connect { url: self.base.clone(), source: e })?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(api_error(status.as_u16(), &bytes));
        }
        let base = self.base.clone();
        Ok(response.bytes_stream().map(move |c| c.map_err(|e| ClientError::Connect { url: base.clone(), source: e })))
    }

    /// A serving certificate for `node`'s own listener, signed by the cluster CA from the PKCS#10 request
    /// `csr_pem` (`POST /api/v1/nodes/NODE/certificate`). The private key never leaves the caller.
    pub async fn node_certificate(&self, node: &str, csr_pem: &str) -> Result<String, ClientError> {
        let path = format!("{}/certificate", Self::object_path(Kind::Node, "", node));
        let answer =
            self.send(self.request(reqwest::Method::POST, &path).json(&serde_json::json!({"csr": csr_pem}))).await?;
        match answer.get("certificate") {
            Some(Value::String(pem)) => Ok(pem.clone()),
            _ => Err(ClientError::Protocol("certificate answer has no \"certificate\"".into())),
        }
    }

    /// Create a join token or credential (`POST /api/v1/tokens`; admins only): `request` is
    /// `{"role", "usage", "ttlSeconds", "description", "nodeName"}`. Returns the token, shown only this once.
    pub async fn create_token(&self, request: &Value) -> Result<String, ClientError> {
        let answer = self.send(self.request(reqwest::Method::POST, "/api/v1/tokens").json(request)).await?;
        match answer.get("token") {
            Some(Value::String(token)) => Ok(token.clone()),
            _ => Err(ClientError::Protocol("token answer has no \"token\"".into())),
        }
    }

    /// Every join token and credential (never their secrets).
    pub async fn list_tokens(&self) -> Result<Vec<Value>, ClientError> {
        let answer = self.send(self.request(reqwest::Method::GET, "/api/v1/tokens")).await?;
        Ok(answer.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// Revoke a token or credential by id: refused by every server at once.
    pub async fn revoke_token(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"))).await
    }

    /// Ready endpoints matching any of `selectors` from the discovery API.
    pub async fn discovery_endpoints(
        &self,
        selectors: &[String],
        namespace: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut r = self.request(reqwest::Method::GET, "/discovery/v1/endpoints");
        for s in selectors {
            r = r.query(&[("selector", s)]);
        }
        if let Some(ns) = namespace {
            r = r.query(&[("namespace", ns)]);
        }
        self.send(r).await
    }
}

fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

fn selected(mut r: reqwest::RequestBuilder, labels: Option<&str>, fields: Option<&str>) -> reqwest::RequestBuilder {
    if let Some(sel) = labels {
        r = r.query(&[("labelSelector", sel)]);
    }
    if let Some(sel) = fields {
        r = r.query(&[("fieldSelector", sel)]);
    }
    r
}

fn api_error(code: u16, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {code}: {}", String::from_utf8_lossy(body).trim()));
    let reason = v.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
    ClientError::Api { code, reason, message }
}

/// Split a byte stream into lines.
fn ndjson(
    body: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> impl Stream<Item = Result<Vec<u8>, ClientError>> {
    futures::stream::unfold((body, Vec::<u8>::new(), false), |(mut body, mut buf, done)| async move {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.len() > 1 {
                    return Some((Ok(line[..line.len() - 1].to_vec()), (body, buf, done)));
                }
                continue;
            }
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(ClientError::Protocol(e.to_string())), (body, buf, true))),
                None => {
                    if buf.is_empty() {
                        return None;
                    }
                    return Some((Ok(std::mem::take(&mut buf)), (body, Vec::new(), true)));
                }
            }
        }
    })
}
