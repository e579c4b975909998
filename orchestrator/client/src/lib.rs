//! A typed-enough HTTP client of the API server, used by the CLI and by node agents, the registry mirror, and
//! the join flow that turns a join token into the cluster CA and a credential.
//!
//! Several servers: [`Client::with_servers`] takes the replicas of one control plane and fails over between
//! them (policy in [`servers`]); [`Watch`] streams ask for bookmarks, so that a watch knows the revision to
//! resume from on another replica and can tell a dead server from an idle collection.
//!
//! TLS: an `https://` server is reached only with the cluster CA ([`Client::with_ca`]); there is no insecure
//! mode. Tokens travel only in the `Authorization` header and never appear in errors or `Debug` output.

pub mod join;
pub mod mirror;
pub mod servers;
mod watch;

pub use join::{join, JoinError, Joined};
pub use watch::Watch;

use futures::{Stream, StreamExt};
use model::Kind;
use serde_json::Value;
use servers::Servers;
use std::sync::Arc;
use std::time::Duration;
use watch::WatchSource;

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
    #[error("no API server given")]
    NoServer,
    #[error("API servers {first} and {other} differ in scheme: give all https:// or all http://")]
    MixedSchemes { first: String, other: String },
    /// A watch that had sent bookmarks went silent: the server is gone or stalled.
    #[error("watch on {url} silent for {silence:?}")]
    WatchSilent { url: String, silence: Duration },
    /// The client moved to another server (this one failed a request or its readiness probe) while a watch
    /// or request was under way on it: the watch ends so the caller resumes elsewhere; the request is retried.
    #[error("{url} abandoned: the client failed over to {now}")]
    FailedOver { url: String, now: String },
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
    /// `ADDED`, `MODIFIED`, `DELETED`, `ERROR`, or `BOOKMARK` (only from a [`Watch::with_bookmarks`]).
    pub kind: String,
    pub object: Value,
}

impl Event {
    /// The store revision this event brings the watcher to (`metadata.resourceVersion`; none for `ERROR`).
    pub fn revision(&self) -> Option<u64> {
        if self.kind == "ERROR" {
            return None;
        }
        self.object.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|v| v.parse().ok())
    }
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

/// A client of one or more API servers (replicas of one control plane). Cheap to clone; clones share which
/// server is current (see [`servers`](crate::servers) for the failover policy).
#[derive(Clone)]
pub struct Client {
    servers: Arc<Servers>,
    token: Option<String>,
    http: reqwest::Client,
    request_timeout: Duration,
    watch_silence: Duration,
}

/// Each attempt of a request that is not a stream is bounded by this (a paused server must not hang the
/// caller); the server's own store timeout is shorter, so a slow store answers 503 before this fires.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch that has shown it sends bookmarks and then stays silent this long is dead (see [`Watch`]).
pub const WATCH_SILENCE: Duration = Duration::from_secs(3);

/// Whether `url` asks for TLS (scheme compared as URLs do, without case).
pub fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// Split server flags into URLs: each value may hold several, separated by commas (`--server a,b --server c`).
pub fn split_servers<S: AsRef<str>>(values: &[S]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.as_ref().split(','))
        .map(|s| s.trim().trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A reqwest builder with the crypto provider installed, as every reqwest client of this crate needs.
pub(crate) fn http_builder() -> reqwest::ClientBuilder {
    pki::install_crypto_provider();
    reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).tcp_nodelay(true)
}

/// One request, kept apart from any server so it can be sent again to another.
struct Call {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    /// A stream (watch, followed logs): no overall timeout.
    stream: bool,
}

impl Call {
    fn new(method: reqwest::Method, path: impl Into<String>) -> Self {
        Self { method, path: path.into(), query: Vec::new(), body: None, stream: false }
    }
    fn get(path: impl Into<String>) -> Self {
        Self::new(reqwest::Method::GET, path)
    }
    fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }
    fn opt_query(self, key: &'static str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }
    fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.clone());
        self
    }
    fn streaming(mut self) -> Self {
        self.stream = true;
        self
    }
}

/// Why an attempt failed, as far as failover cares.
enum Failure {
    /// The server was not reached: try the next one.
    Connect(reqwest::Error),
    /// Reached but no good answer (timeout, broken connection, 5xx): retry once elsewhere.
    Server(ClientError),
    /// The server answered; the answer stands.
    Final(ClientError),
}

impl Client {
    /// A client of a plain-HTTP server. An `https://` URL is refused: it needs [`Client::with_ca`].
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_servers(&[server.to_string()], None, token)
    }

    /// A client that trusts only the cluster CA `ca` for an `https://` server (a plain `http://` URL stays
    /// plain).
    pub fn with_ca(server: &str, ca: &pki::CaCert, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_servers(&[server.to_string()], Some(ca), token)
    }

    /// A client of several replicas of one control plane, tried in the given order: all `https://` (checked
    /// against the cluster CA `ca`, which is then required) or all `http://`.
    pub fn with_servers(
        servers: &[String],
        ca: Option<&pki::CaCert>,
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        let urls = split_servers(servers);
        let first = urls.first().cloned().ok_or(ClientError::NoServer)?;
        let https = is_https(&first);
        if let Some(other) = urls.iter().find(|u| is_https(u) != https) {
            return Err(ClientError::MixedSchemes { first, other: other.clone() });
        }
        let builder = match (https, ca) {
            (true, None) => return Err(ClientError::NeedsCa { url: first }),
            (_, Some(ca)) => {
                let tls =
                    pki::client_config(ca, None).map_err(|e| ClientError::Tls { url: first.clone(), source: e })?;
                http_builder().tls_backend_preconfigured(tls)
            }
            (false, None) => http_builder(),
        };
        let http = builder.build().map_err(|e| ClientError::Connect { url: first.clone(), source: e })?;
        Ok(Self {
            servers: Servers::new(urls),
            token,
            http,
            request_timeout: REQUEST_TIMEOUT,
            watch_silence: WATCH_SILENCE,
        })
    }

    /// Bound each attempt of a plain request by `request` and end watches that stay silent for
    /// `watch_silence` (after their first bookmark). Defaults: [`REQUEST_TIMEOUT`], [`WATCH_SILENCE`].
    pub fn with_timeouts(mut self, request: Duration, watch_silence: Duration) -> Self {
        self.request_timeout = request;
        self.watch_silence = watch_silence;
        self
    }

    /// Probe the current server's `/readyz` every second and move to another ready server after two failures;
    /// for long-running roles (agents). Runs until the last clone of this client is dropped; calling it again
    /// does nothing. Must be called inside a tokio runtime.
    pub fn probe_readiness(&self) {
        self.servers.start_probe(self.http.clone());
    }

    /// The first configured server (the one a kubeconfig names).
    pub fn server(&self) -> &str {
        self.servers.url(0)
    }

    /// The server requests go to now.
    pub fn current_server(&self) -> String {
        self.servers.url(self.servers.current()).to_string()
    }

    /// Every configured server, in order.
    pub fn servers(&self) -> &[String] {
        self.servers.urls()
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

    fn builder(&self, base: &str, call: &Call) -> reqwest::RequestBuilder {
        let mut r = self.http.request(call.method.clone(), format!("{base}{}", call.path));
        if !call.query.is_empty() {
            r = r.query(&call.query);
        }
        if let Some(body) = &call.body {
            r = r.json(body);
        }
        if !call.stream {
            r = r.timeout(self.request_timeout);
        }
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// One attempt at server `index`: the response (its status is a success) or why it failed.
    async fn attempt(&self, index: usize, call: &Call) -> Result<reqwest::Response, Failure> {
        let base = self.servers.url(index);
        // When the client moves off this server meanwhile (its readiness probe failed, or another request
        // did), waiting out this request's timeout gains nothing: give up and retry where the client went.
        let mut moved = self.servers.subscribe();
        let sent = tokio::select! {
            sent = self.builder(base, call).send() => sent,
            now = moved.wait_for(|cur| *cur != index) => {
                let now = now.map(|n| self.servers.url(*n).to_string()).unwrap_or_default();
                return Err(Failure::Server(ClientError::FailedOver { url: base.to_string(), now }));
            }
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(Failure::Connect(e)),
            Err(e) => return Err(Failure::Server(ClientError::Connect { url: base.to_string(), source: e })),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let err = api_error(status.as_u16(), &bytes);
        if status.is_server_error() {
            Err(Failure::Server(err))
        } else {
            Err(Failure::Final(err))
        }
    }

    /// Send `call` with failover (see [`servers`](crate::servers)): returns the successful response and the
    /// index of the server that gave it.
    async fn open(&self, call: &Call) -> Result<(usize, reqwest::Response), ClientError> {
        let n = self.servers.urls().len();
        let mut index = self.servers.current();
        let mut slow_retried = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(index, call).await {
                Ok(response) => return Ok((index, response)),
                Err(f) => f,
            };
            let (err, retry) = match failure {
                Failure::Final(err) => return Err(err),
                Failure::Connect(e) => {
                    (ClientError::Connect { url: self.servers.url(index).to_string(), source: e }, attempt < n)
                }
                Failure::Server(err) => {
                    let retry = n > 1 && !slow_retried;
                    slow_retried = true;
                    (err, retry)
                }
            };
            let next = self.servers.move_from(index, self.servers.next(index), &err.to_string());
            if !retry {
                return Err(err);
            }
            // Someone else may have moved the client already; never try the failed server twice in a row.
            index = if next == index { self.servers.next(index) } else { next };
        }
    }

    async fn send(&self, call: Call) -> Result<Value, ClientError> {
        let (index, response) = self.open(&call).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Connect { url: self.servers.url(index).to_string(), source: e })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.send(Call::get(Self::object_path(kind, namespace, name))).await
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
        let call = Call::get(Self::collection_path(kind, namespace))
            .opt_query("labelSelector", labels)
            .opt_query("fieldSelector", fields);
        let list = self.send(call).await?;
        match list.get("items") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(ClientError::Protocol("list answer has no items".into())),
        }
    }

    /// Create an object. Retried on another server after a 5xx or a timeout, so a create whose first attempt
    /// landed may come back as 409 (already exists): that answer is reported as is.
    pub async fn create(&self, kind: Kind, namespace: &str, object: &Value) -> Result<Value, ClientError> {
        let ns = if kind.namespaced() { Some(namespace) } else { None };
        self.send(Call::new(reqwest::Method::POST, Self::collection_path(kind, ns)).json(object)).await
    }

    /// Replace an object (compare-and-swap when `object` carries `metadata.resourceVersion`).
    pub async fn update(&self, kind: Kind, namespace: &str, name: &str, object: &Value) -> Result<Value, ClientError> {
        self.send(Call::new(reqwest::Method::PUT, Self::object_path(kind, namespace, name)).json(object)).await
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
        self.send(Call::new(reqwest::Method::PUT, path).json(object)).await
    }

    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.send(Call::new(reqwest::Method::DELETE, Self::object_path(kind, namespace, name))).await
    }

    /// A Deployment's revision records, oldest first.
    pub async fn deployment_revisions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<model::RevisionRecord>, ClientError> {
        let path = format!("{}/revisions", Self::object_path(Kind::Deployment, namespace, name));
        let list = self.send(Call::get(path)).await?;
        let items =
            list.get("items").cloned().ok_or_else(|| ClientError::Protocol("list answer has no items".into()))?;
        serde_json::from_value(items).map_err(|e| ClientError::Protocol(format!("revision records: {e}")))
    }

    /// Server-side apply; `dry_run` validates and reports without writing.
    pub async fn apply(&self, object: &Value, dry_run: bool) -> Result<Applied, ClientError> {
        let mut call = Call::new(reqwest::Method::POST, "/api/v1/apply").json(object);
        if dry_run {
            call = call.query("dryRun", "true");
        }
        let v = self.send(call).await?;
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
    ) -> Result<Watch, ClientError> {
        self.watch_selected(kind, namespace, resource_version, selector, None).await
    }

    /// Watch the pods bound to `node`: a pod that arrives on the node comes as `ADDED`, one that leaves it as
    /// `DELETED`.
    pub async fn watch_pods_on_node(&self, node: &str, resource_version: Option<u64>) -> Result<Watch, ClientError> {
        self.watch_selected(Kind::Pod, None, resource_version, None, Some(&node_selector(node))).await
    }

    async fn watch_selected(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        resource_version: Option<u64>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Watch, ClientError> {
        let mut call = Call::get(Self::collection_path(kind, namespace))
            .query("watch", "true")
            .query("allowWatchBookmarks", "true")
            .streaming();
        if let Some(rv) = resource_version {
            call = call.query("resourceVersion", rv);
        }
        let call = call.opt_query("labelSelector", labels).opt_query("fieldSelector", fields);
        let (index, response) = self.open(&call).await?;
        Ok(Watch::start(
            WatchSource {
                servers: self.servers.clone(),
                index,
                url: self.servers.url(index).to_string(),
                silence: self.watch_silence,
            },
            Box::pin(response.bytes_stream()),
            resource_version,
        ))
    }

    /// A pod's logs through the API server (`GET .../pods/NAME/log`), which relays them from the agent of the
    /// pod's node; with `follow` the stream stays open while the container runs.
    pub async fn pod_logs(
        &self,
        namespace: &str,
        name: &str,
        opts: &LogRequest,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, ClientError>> + use<>, ClientError> {
        let call = Call::get(format!("{}/log", Self::object_path(Kind::Pod, namespace, name)))
            .query("follow", opts.follow)
            .query("previous", opts.previous)
            .opt_query("container", opts.container.as_deref())
            .opt_query("tailLines", opts.tail_lines.map(|t| t.to_string()).as_deref())
            .streaming();
        let (index, response) = self.open(&call).await?;
        let base = self.servers.url(index).to_string();
        Ok(response.bytes_stream().map(move |c| c.map_err(|e| ClientError::Connect { url: base.clone(), source: e })))
    }

    /// A serving certificate for `node`'s own listener, signed by the cluster CA from the PKCS#10 request
    /// `csr_pem` (`POST /api/v1/nodes/NODE/certificate`). The private key never leaves the caller.
    pub async fn node_certificate(&self, node: &str, csr_pem: &str) -> Result<String, ClientError> {
        let path = format!("{}/certificate", Self::object_path(Kind::Node, "", node));
        let answer =
            self.send(Call::new(reqwest::Method::POST, path).json(&serde_json::json!({"csr": csr_pem}))).await?;
        match answer.get("certificate") {
            Some(Value::String(pem)) => Ok(pem.clone()),
            _ => Err(ClientError::Protocol("certificate answer has no \"certificate\"".into())),
        }
    }

    /// Create a join token or credential (`POST /api/v1/tokens`; admins only): `request` is
    /// `{"role", "usage", "ttlSeconds", "description", "nodeName"}`. Returns the token, shown only this once.
    pub async fn create_token(&self, request: &Value) -> Result<String, ClientError> {
        let answer = self.send(Call::new(reqwest::Method::POST, "/api/v1/tokens").json(request)).await?;
        match answer.get("token") {
            Some(Value::String(token)) => Ok(token.clone()),
            _ => Err(ClientError::Protocol("token answer has no \"token\"".into())),
        }
    }

    /// The control-plane replicas and which one leads (`GET /api/v1/controlplane`, a `ControlPlaneList`).
    pub async fn control_plane(&self) -> Result<Value, ClientError> {
        self.send(Call::get("/api/v1/controlplane")).await
    }

    /// Every join token and credential (never their secrets).
    pub async fn list_tokens(&self) -> Result<Vec<Value>, ClientError> {
        let answer = self.send(Call::get("/api/v1/tokens")).await?;
        Ok(answer.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// Revoke a token or credential by id: refused by every server at once.
    pub async fn revoke_token(&self, id: &str) -> Result<Value, ClientError> {
        self.send(Call::new(reqwest::Method::DELETE, format!("/api/v1/tokens/{id}"))).await
    }

    /// Ready endpoints matching any of `selectors` from the discovery API.
    pub async fn discovery_endpoints(
        &self,
        selectors: &[String],
        namespace: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut call = Call::get("/discovery/v1/endpoints");
        for s in selectors {
            call = call.query("selector", s);
        }
        self.send(call.opt_query("namespace", namespace)).await
    }
}

fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
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
