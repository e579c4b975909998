//! The HTTP/JSON API server (axum): Kubernetes-style resource paths over the [`Store`], server-side apply,
//! watches as newline-delimited JSON, the discovery endpoints API over the registry, pod logs relayed from
//! the agents, `/healthz`, `/readyz`, `/metrics`; tokens, joining and node certificates (`tokens.rs`); the
//! control-plane replicas and which one leads (`/api/v1/controlplane`, from [`crate::ha::Status`]); Services'
//! virtual addresses, allocated on create (`cluster_ip.rs`).
//!
//! Every route but `/healthz`, `/readyz`, `/metrics`, `/cacerts` and `/api/v1/join` passes [`authz::guard`]:
//! authentication (`auth.rs`: the bootstrap token or a stored credential) then authorization (`authz.rs`: per
//! role).
//!
//! Boundary: the API validates and stores; it never schedules, runs or routes anything. Controllers and agents
//! are its clients (in-process or over HTTP); the one call it makes to an agent is relaying a pod's logs.

pub mod auth;
pub mod authz;
pub mod cluster_ip;
mod logs;
pub mod object;
mod tokens;

pub use cluster_ip::ServiceCidr;
pub use tokens::{CertificateAuthority, SignError};

use crate::store::{Key, Prefix, Store, StoreError, StoreEvent, Versioned};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use discovery::{Registry, Selector};
use futures::StreamExt;
use model::clock::{Clock, SystemClock};
use model::wire::{DiscoverySnapshot, DISCOVERY_HEARTBEAT};
use model::{self, Kind};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Largest accepted request body (etcd's own request limit is 1.5 MiB).
pub const MAX_BODY_BYTES: usize = 1536 * 1024;

/// Shared state of the API server. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Arc<dyn Store>,
    /// The bootstrap admin token; also what the log relay presents to agents.
    token: Option<String>,
    /// `None` when authentication is disabled.
    auth: Option<Arc<auth::Authenticator>>,
    authority: Option<Arc<dyn CertificateAuthority>>,
    clock: Arc<dyn Clock>,
    registry: Option<Arc<Registry>>,
    metrics: Arc<Metrics>,
    /// With a cluster CA: the TLS configuration agents are called with (the CA as the only root, the
    /// API server's client certificate as identity).
    agent_tls: Option<Arc<rustls::ClientConfig>>,
    /// This replica's role among the control-plane replicas (`None`: not part of one, e.g. in tests).
    control_plane: Option<Arc<crate::ha::Status>>,
    /// Where Services' `spec.clusterIP` come from.
    service_cidr: ServiceCidr,
}

#[derive(Default)]
struct Metrics {
    by_status: parking_lot::Mutex<BTreeMap<(String, u16), u64>>,
    watches_open: AtomicU64,
}

impl ApiState {
    /// `token: None` disables authentication and authorization (tests and in-process use only).
    /// `Some(t)`: `t` is the bootstrap admin token, and stored token records are honoured too.
    pub fn new(store: Arc<dyn Store>, token: Option<String>, registry: Option<Arc<Registry>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth: token.clone().map(|t| Arc::new(auth::Authenticator::new(t))),
                store,
                token,
                authority: None,
                clock: Arc::new(SystemClock),
                registry,
                metrics: Arc::default(),
                agent_tls: None,
                control_plane: None,
                service_cidr: ServiceCidr::default(),
            }),
        }
    }

    /// The cluster CA: `/cacerts`, node certificates, and the CA hash in join tokens. Without it those
    /// endpoints answer that there is none.
    pub fn with_authority(mut self, authority: Arc<dyn CertificateAuthority>) -> Self {
        Arc::make_mut(&mut self.inner).authority = Some(authority);
        self
    }

    /// Call agents over TLS, verifying each against `ca` as its node's name and presenting `identity` (a
    /// certificate for [`pki::APISERVER_NAME`]), instead of plain HTTP with the bootstrap token.
    pub fn with_agent_tls(mut self, ca: &pki::CaCert, identity: &pki::Identity) -> Result<Self, pki::PkiError> {
        let config = pki::client_config(ca, Some(identity))?;
        Arc::make_mut(&mut self.inner).agent_tls = Some(Arc::new(config));
        Ok(self)
    }

    /// The clock token expiry and creation times are read from (tests use a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        Arc::make_mut(&mut self.inner).clock = clock;
        self
    }

    /// Show this replica's role: `berth_leader` and friends on `/metrics`, and `GET /api/v1/controlplane`.
    pub fn with_control_plane(mut self, status: Arc<crate::ha::Status>) -> Self {
        Arc::make_mut(&mut self.inner).control_plane = Some(status);
        self
    }

    /// The range Services' virtual addresses are allocated from (default [`cluster_ip::DEFAULT_SERVICE_CIDR`]).
    /// Every replica of one store must be given the same.
    pub fn with_service_cidr(mut self, cidr: ServiceCidr) -> Self {
        Arc::make_mut(&mut self.inner).service_cidr = cidr;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
}

/// The router with every route and middleware.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/namespaces/{ns}/{plural}", get(list_ns).post(create_ns))
        .route("/api/v1/namespaces/{ns}/{plural}/{name}", get(get_ns).put(update_ns).delete(delete_ns))
        .route("/api/v1/namespaces/{ns}/{plural}/{name}/status", axum::routing::put(status_ns))
        .route("/api/v1/namespaces/{ns}/{plural}/{name}/revisions", get(revisions_ns))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(logs::pod_log))
        .route("/api/v1/{plural}", get(list_all).post(create_cluster))
        .route("/api/v1/{plural}/{name}", get(get_cluster).put(update_cluster).delete(delete_cluster))
        .route("/api/v1/{plural}/{name}/status", axum::routing::put(status_cluster))
        .route("/api/v1/{plural}/{name}/certificate", post(tokens::node_certificate))
        .route("/api/v1/tokens", get(tokens::list_tokens).post(tokens::create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::delete_token))
        .route("/api/v1/controlplane", get(control_plane))
        .route("/discovery/v1/endpoints", get(discovery_endpoints))
        .route("/discovery/v1/snapshot", get(discovery_snapshot))
        .route_layer(middleware::from_fn_with_state(state.clone(), authz::guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/cacerts", get(tokens::cacerts))
        .route("/api/v1/join", post(tokens::join))
        .merge(api)
        // Checks Content-Length up front, so an oversized upload is refused before it is read.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Follow token records from the start rather than on the first request; the follower stops when the
    // router (the last holder of the state) is dropped.
    if let Some(auth) = &state.inner.auth {
        auth.follow(state.inner.store.clone());
    }
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

// ---------------------------------------------------------------------------------------------------------
// Errors

/// An API failure, rendered as a Kubernetes-style `Status` object.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// The Status's `details` (`{name, kind}` of a 403).
    details: Option<Value>,
    /// A 401, which carries `WWW-Authenticate: Bearer`.
    challenge: bool,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, challenge: false }
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self { challenge: true, ..Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message) }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (code, reason) = match &e {
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            StoreError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            StoreError::Compacted { .. } => (StatusCode::GONE, "Expired"),
            StoreError::Backend(_) | StoreError::Fenced(_) => (StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable"),
        };
        Self::new(code, reason, e.to_string())
    }
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "message": message, "code": code.as_u16()})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = status_body(self.code, self.reason, &self.message);
        if let Some(details) = self.details {
            body["details"] = details;
        }
        let mut response = (self.code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

// ---------------------------------------------------------------------------------------------------------
// Middleware

async fn count(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    *state.inner.metrics.by_status.lock().entry((method, response.status().as_u16())).or_default() += 1;
    response
}

async fn metrics(State(state): State<ApiState>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    out.push_str("# HELP berth_api_requests_total API requests by method and status code.\n");
    out.push_str("# TYPE berth_api_requests_total counter\n");
    for ((method, code), n) in state.inner.metrics.by_status.lock().iter() {
        let _ = writeln!(out, "berth_api_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}");
    }
    out.push_str("# HELP berth_api_watches Open watch streams.\n# TYPE berth_api_watches gauge\n");
    let _ = writeln!(out, "berth_api_watches {}", state.inner.metrics.watches_open.load(Ordering::Relaxed));
    if let Some(status) = &state.inner.control_plane {
        out.push_str(&status.metrics_text());
    }
    // Bounded: `/metrics` answers (without this figure) while the store does not.
    if let Ok(Ok(rev)) = tokio::time::timeout(READY_STORE_TIMEOUT, state.inner.store.revision()).await {
        out.push_str("# HELP berth_store_revision Current store revision.\n# TYPE berth_store_revision gauge\n");
        let _ = writeln!(out, "berth_store_revision {rev}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// How long `/readyz` waits for a store read.
const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz` (open, like `/healthz`): 200 `ok` when a store read succeeds within 2 s and the discovery
/// registry (when this server has one) is synced with the store; else 503 with a one-line reason. Clients
/// with several servers move off one that is not ready.
async fn readyz(State(state): State<ApiState>) -> Response {
    let unready = |reason: String| (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
    match tokio::time::timeout(READY_STORE_TIMEOUT, state.inner.store.revision()).await {
        Err(_) => return unready(format!("store: no answer within {} s", READY_STORE_TIMEOUT.as_secs())),
        Ok(Err(e)) => return unready(format!("store: {e}")),
        Ok(Ok(_)) => {}
    }
    if state.inner.registry.as_ref().is_some_and(|r| !r.is_synced()) {
        return unready("registry: not yet synchronized with the store".into());
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// `GET /api/v1/controlplane` (admins): a `ControlPlaneList` of the replicas, `{name, url, leader, since}`.
async fn control_plane(State(s): State<ApiState>) -> ApiResult {
    let status = s.inner.control_plane.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", "this server does not report control-plane replicas")
    })?;
    let items = status.members().await?;
    Ok(json_response(StatusCode::OK, &json!({"apiVersion": "v1", "kind": "ControlPlaneList", "items": items})))
}

// ---------------------------------------------------------------------------------------------------------
// Query parameters

#[derive(Default)]
struct Query {
    watch: bool,
    resource_version: Option<u64>,
    label_selector: Option<Selector>,
    selectors: Vec<Selector>,
    namespace: Option<String>,
    revision: Option<u64>,
    epoch: Option<String>,
    dry_run: bool,
    /// `fieldSelector=spec.nodeName=NAME`: only pods bound to NAME (`""`: unbound pods).
    node_name: Option<String>,
    /// `allowWatchBookmarks=true`: an idle watch sends `BOOKMARK` events.
    bookmarks: bool,
}

/// The one field selector served: `spec.nodeName=NAME` (or `==`), what an agent watches its pods with.
fn parse_field_selector(v: &str) -> Result<Option<String>, ApiError> {
    if v.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::bad_request(
            "query parameter fieldSelector: only spec.nodeName=NAME is supported (one requirement, = or ==)",
        )
    };
    let (field, value) = v.split_once("==").or_else(|| v.split_once('=')).ok_or_else(bad)?;
    if field.trim() != "spec.nodeName" || value.contains([',', '=', '!']) {
        return Err(bad());
    }
    Ok(Some(value.trim().to_string()))
}

fn parse_query(raw: Option<String>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let Some(raw) = raw else { return Ok(q) };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let parse_u64 = |name: &str| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("query parameter {name}: {v:?} is not a revision")))
        };
        let parse_sel =
            |name: &str| Selector::parse(&v).map_err(|e| ApiError::bad_request(format!("query parameter {name}: {e}")));
        match k.as_ref() {
            "watch" => q.watch = matches!(v.as_ref(), "true" | "1" | ""),
            "resourceVersion" if !v.is_empty() => q.resource_version = Some(parse_u64("resourceVersion")?),
            "labelSelector" if !v.is_empty() => q.label_selector = Some(parse_sel("labelSelector")?),
            "selector" => q.selectors.push(parse_sel("selector")?),
            "namespace" if !v.is_empty() => q.namespace = Some(v.into_owned()),
            "revision" => q.revision = Some(parse_u64("revision")?),
            "epoch" if !v.is_empty() => q.epoch = Some(v.into_owned()),
            "dryRun" => q.dry_run = !matches!(v.as_ref(), "false" | "0"),
            "fieldSelector" => q.node_name = parse_field_selector(&v)?,
            "allowWatchBookmarks" => q.bookmarks = matches!(v.as_ref(), "true" | "1" | ""),
            _ => {}
        }
    }
    Ok(q)
}

// ---------------------------------------------------------------------------------------------------------
// Resource handlers

fn kind_for(plural: &str) -> Result<Kind, ApiError> {
    Kind::from_cli_name(plural)
        .filter(|k| k.plural() == plural)
        .ok_or_else(|| ApiError::not_found(format!("the server does not serve resource {plural:?}")))
}

fn scope(plural: &str, namespace: Option<&str>) -> Result<(Kind, String), ApiError> {
    let kind = kind_for(plural)?;
    match (kind.namespaced(), namespace) {
        (true, Some(ns)) => Ok((kind, ns.to_string())),
        (false, None) => Ok((kind, String::new())),
        (true, None) => {
            Err(ApiError::bad_request(format!("{plural} are namespaced: use /api/v1/namespaces/NS/{plural}")))
        }
        (false, Some(_)) => Err(ApiError::bad_request(format!("{plural} are cluster-scoped: use /api/v1/{plural}"))),
    }
}

/// Decode stored bytes and inject the revision as `metadata.resourceVersion`.
fn present(v: &Versioned) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_slice(&v.value).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("stored {} is corrupt: {e}", v.key))
    })?;
    object::set_resource_version(&mut value, v.revision);
    Ok(value)
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

/// Validate a body for `kind`, defaulting its namespace to the path's.
fn validate(kind: Kind, namespace: &str, mut body: Value) -> Result<model::Document, ApiError> {
    if kind.namespaced() {
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("namespace").or_insert_with(|| Value::String(namespace.to_string()));
        }
    }
    let doc = model::decode(Some(kind), body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if kind.namespaced() && doc.namespace != namespace {
        return Err(ApiError::bad_request(format!(
            "metadata.namespace: {:?} does not match the request path namespace {namespace:?}",
            doc.namespace
        )));
    }
    Ok(doc)
}

async fn list_ns(
    State(s): State<ApiState>,
    Path((ns, plural)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (kind, ns) = scope(&plural, Some(&ns))?;
    list(s, kind, Some(ns), parse_query(q)?).await
}

async fn list_all(State(s): State<ApiState>, Path(plural): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let kind = kind_for(&plural)?;
    let ns = if kind.namespaced() { None } else { Some(String::new()) };
    list(s, kind, ns, parse_query(q)?).await
}

async fn list(s: ApiState, kind: Kind, namespace: Option<String>, q: Query) -> ApiResult {
    if q.node_name.is_some() && kind != Kind::Pod {
        return Err(ApiError::bad_request(format!(
            "query parameter fieldSelector: {} have no field selector (only pods: spec.nodeName)",
            kind.plural()
        )));
    }
    let prefix = Prefix { kind: kind.plural().to_string(), namespace };
    if q.watch {
        return watch(s, kind, prefix, q).await;
    }
    let (items, revision) = s.inner.store.list(&prefix, q.label_selector.as_ref()).await?;
    let items = items.iter().map(present).collect::<Result<Vec<_>, _>>()?;
    let items: Vec<Value> = items.into_iter().filter(|v| on_node(q.node_name.as_deref(), v)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": format!("{}List", kind.kind_name()),
                "metadata": {"resourceVersion": revision.to_string()}, "items": items}),
    ))
}

async fn get_ns(State(s): State<ApiState>, Path((ns, plural, name)): Path<(String, String, String)>) -> ApiResult {
    let (kind, ns) = scope(&plural, Some(&ns))?;
    get_one(s, Key::new(kind.plural(), ns, name)).await
}

async fn get_cluster(State(s): State<ApiState>, Path((plural, name)): Path<(String, String)>) -> ApiResult {
    let (kind, ns) = scope(&plural, None)?;
    get_one(s, Key::new(kind.plural(), ns, name)).await
}

async fn get_one(s: ApiState, key: Key) -> ApiResult {
    match s.inner.store.get(&key).await? {
        Some(v) => Ok(json_response(StatusCode::OK, &present(&v)?)),
        None => Err(StoreError::NotFound(key).into()),
    }
}

/// `GET /api/v1/namespaces/NS/deployments/NAME/revisions`: the Deployment's revision records (the templates
/// `rollout history` shows and `rollout undo` restores), oldest first. Read-only: the Deployment controller
/// owns them.
async fn revisions_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> ApiResult {
    use crate::controllers::deployment::{RevisionRecord, REVISIONS_KIND};
    let (kind, ns) = scope(&plural, Some(&ns))?;
    if kind != Kind::Deployment {
        return Err(ApiError::not_found(format!("{plural} have no revisions (only deployments do)")));
    }
    let key = Key::new(kind.plural(), ns.clone(), name.clone());
    if s.inner.store.get(&key).await?.is_none() {
        return Err(StoreError::NotFound(key).into());
    }
    let prefix = Prefix { kind: REVISIONS_KIND.to_string(), namespace: Some(ns) };
    let (items, revision) = s.inner.store.list(&prefix, None).await?;
    let mut records: Vec<RevisionRecord> = items
        .iter()
        .filter_map(|v| serde_json::from_slice::<RevisionRecord>(&v.value).ok())
        .filter(|r| r.deployment == name)
        .collect();
    records.sort_by_key(|r| r.revision);
    let items = serde_json::to_value(&records)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "DeploymentRevisionList",
                "metadata": {"resourceVersion": revision.to_string()}, "items": items}),
    ))
}

async fn create_ns(
    State(s): State<ApiState>,
    Path((ns, plural)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let (kind, ns) = scope(&plural, Some(&ns))?;
    create(s, kind, ns, parse_query(q)?, body).await
}

async fn create_cluster(
    State(s): State<ApiState>,
    Path(plural): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let (kind, ns) = scope(&plural, None)?;
    create(s, kind, ns, parse_query(q)?, body).await
}

async fn create(s: ApiState, kind: Kind, ns: String, q: Query, body: Bytes) -> ApiResult {
    let doc = validate(kind, &ns, parse_body(&body)?)?;
    let key = Key::new(kind.plural(), ns, doc.name.clone());
    let mut object = doc.object;
    object::prepare_create(&mut object);
    if q.dry_run {
        if kind == Kind::Service {
            cluster_ip::check(&object, &s.inner.service_cidr)?;
        }
        return Ok(json_response(StatusCode::CREATED, &object));
    }
    let revision = store_new(&s, kind, &key, &mut object).await??;
    object::set_resource_version(&mut object, revision);
    Ok(json_response(StatusCode::CREATED, &object))
}

/// Write a new object, a Service with its address claimed first (see `cluster_ip.rs`) and released again
/// when the write fails. The store's own answer is passed on as is, so `apply` can tell `AlreadyExists`.
async fn store_new(
    s: &ApiState,
    kind: Kind,
    key: &Key,
    object: &mut Value,
) -> Result<Result<u64, StoreError>, ApiError> {
    let store = s.inner.store.as_ref();
    let claim = match kind {
        Kind::Service => cluster_ip::claim(store, &s.inner.service_cidr, &key.namespace, &key.name, object).await?,
        _ => None,
    };
    let created = match encode(object) {
        Ok(bytes) => store.create(key, bytes).await,
        Err(e) => {
            cluster_ip::release(store, claim).await;
            return Err(e);
        }
    };
    if created.is_err() {
        cluster_ip::release(store, claim).await;
    }
    Ok(created)
}

fn encode(object: &Value) -> Result<Vec<u8>, ApiError> {
    let mut object = object.clone();
    object::strip_for_storage(&mut object);
    serde_json::to_vec(&object)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

async fn update_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let (kind, ns) = scope(&plural, Some(&ns))?;
    update(s, kind, ns, name, body).await
}

async fn update_cluster(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let (kind, ns) = scope(&plural, None)?;
    update(s, kind, ns, name, body).await
}

/// Replace the user-owned parts of an object; `status` and system metadata are kept. A
/// `metadata.resourceVersion` in the body makes it a compare-and-swap (409 when stale); without one the
/// update applies to whatever is current.
async fn update(s: ApiState, kind: Kind, ns: String, name: String, body: Bytes) -> ApiResult {
    let body = parse_body(&body)?;
    let expected = object::resource_version(&body).map_err(ApiError::bad_request)?;
    let doc = validate(kind, &ns, body)?;
    if doc.name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name: {:?} does not match the request path name {name:?}",
            doc.name
        )));
    }
    let key = Key::new(kind.plural(), ns, name);
    write_with(&s, &key, expected, |stored| {
        let mut desired = doc.object.clone();
        if kind == Kind::Service {
            cluster_ip::carry_api(stored, &mut desired)?;
        }
        Ok(object::merge_update(stored, &desired, true))
    })
    .await
}

async fn status_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let (kind, ns) = scope(&plural, Some(&ns))?;
    status(s, Key::new(kind.plural(), ns, name), body).await
}

async fn status_cluster(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let (kind, ns) = scope(&plural, None)?;
    status(s, Key::new(kind.plural(), ns, name), body).await
}

/// The status subresource: replaces only `status`.
async fn status(s: ApiState, key: Key, body: Bytes) -> ApiResult {
    let body = parse_body(&body)?;
    let expected = object::resource_version(&body).map_err(ApiError::bad_request)?;
    if !body.get("status").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("status: expected an object"));
    }
    write_with(&s, &key, expected, |stored| Ok(object::merge_status(stored, &body))).await
}

/// Read-modify-write with compare-and-swap. With `expected`, one attempt (409 when stale); without, retry on
/// concurrent writers.
async fn write_with(
    s: &ApiState,
    key: &Key,
    expected: Option<u64>,
    change: impl Fn(&Value) -> Result<Value, ApiError>,
) -> ApiResult {
    for _ in 0..16 {
        let current = s.inner.store.get(key).await?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        if let Some(expected) = expected {
            if expected != current.revision {
                return Err(StoreError::Conflict { key: key.clone(), expected, actual: current.revision }.into());
            }
        }
        let stored = present(&current)?;
        let mut next = change(&stored)?;
        if object::desired_view(&next) == object::desired_view(&stored) && next.get("status") == stored.get("status") {
            return Ok(json_response(StatusCode::OK, &stored));
        }
        match s.inner.store.update(key, encode(&next)?, current.revision).await {
            Ok(revision) => {
                object::set_resource_version(&mut next, revision);
                return Ok(json_response(StatusCode::OK, &next));
            }
            Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!("{key}: too many concurrent writers, try again")))
}

async fn delete_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (kind, ns) = scope(&plural, Some(&ns))?;
    delete(s, Key::new(kind.plural(), ns, name), parse_query(q)?).await
}

async fn delete_cluster(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let (kind, ns) = scope(&plural, None)?;
    delete(s, Key::new(kind.plural(), ns, name), parse_query(q)?).await
}

async fn delete(s: ApiState, key: Key, q: Query) -> ApiResult {
    // Without a client precondition the delete is unconditional: a write between our read and the delete
    // (an agent's status update, say) is retried on a fresh read, not reported to the client as a conflict.
    let mut attempts = 0;
    loop {
        let current = s.inner.store.get(&key).await?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        let expected = q.resource_version.unwrap_or(current.revision);
        match s.inner.store.delete(&key, Some(expected)).await {
            Ok(revision) => {
                let mut object = present(&current)?;
                if key.kind == Kind::Service.plural() {
                    cluster_ip::free(s.inner.store.as_ref(), &key.namespace, &key.name, &object).await;
                }
                object::set_resource_version(&mut object, revision);
                return Ok(json_response(StatusCode::OK, &object));
            }
            Err(StoreError::Conflict { .. }) if q.resource_version.is_none() && attempts < 8 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Server-side apply of one object of any kind: create it, update its user-owned parts, or do nothing when
/// they are unchanged. Answers `{"result": "created"|"configured"|"unchanged", "object": ...}`.
async fn apply(State(s): State<ApiState>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    let q = parse_query(q)?;
    let body = parse_body(&body)?;
    let doc = model::decode(None, body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = Key::new(doc.kind.plural(), doc.namespace.clone(), doc.name.clone());
    for _ in 0..16 {
        match s.inner.store.get(&key).await? {
            None => {
                let mut object = doc.object.clone();
                object::prepare_create(&mut object);
                if q.dry_run {
                    if doc.kind == Kind::Service {
                        cluster_ip::check(&object, &s.inner.service_cidr)?;
                    }
                    return Ok(applied("created", &object, &doc.warnings));
                }
                match store_new(&s, doc.kind, &key, &mut object).await? {
                    Ok(rev) => {
                        object::set_resource_version(&mut object, rev);
                        return Ok(applied("created", &object, &doc.warnings));
                    }
                    Err(StoreError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(current) => {
                let stored = present(&current)?;
                let mut desired = doc.object.clone();
                if doc.kind == Kind::Service {
                    cluster_ip::carry_api(&stored, &mut desired)?;
                }
                if object::desired_view(&stored) == object::desired_view(&desired) {
                    return Ok(applied("unchanged", &stored, &doc.warnings));
                }
                let mut next = object::merge_update(&stored, &desired, true);
                if q.dry_run {
                    return Ok(applied("configured", &next, &doc.warnings));
                }
                match s.inner.store.update(&key, encode(&next)?, current.revision).await {
                    Ok(rev) => {
                        object::set_resource_version(&mut next, rev);
                        return Ok(applied("configured", &next, &doc.warnings));
                    }
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!("{key}: too many concurrent writers, try again")))
}

fn applied(result: &str, object: &Value, warnings: &[String]) -> Response {
    json_response(StatusCode::OK, &json!({"result": result, "object": object, "warnings": warnings}))
}

// ---------------------------------------------------------------------------------------------------------
// Watches

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

struct WatchGuard(ApiState);
impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.inner.metrics.watches_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a pod passes `fieldSelector=spec.nodeName=node` (`None`: no field selector).
fn on_node(node: Option<&str>, pod: &Value) -> bool {
    node.is_none_or(|n| pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("") == n)
}

/// How long a watch with `allowWatchBookmarks=true` stays silent before it sends a `BOOKMARK`.
pub const BOOKMARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn bookmark_line(kind: Kind, revision: u64) -> Bytes {
    event_line(
        "BOOKMARK",
        &json!({"apiVersion": "v1", "kind": kind.kind_name(), "metadata": {"resourceVersion": revision.to_string()}}),
    )
}

/// Stream `ADDED|MODIFIED|DELETED` events after `resourceVersion`; without one, the current objects come
/// first as `ADDED`. An expired revision ends the stream with an `ERROR` event carrying a 410 Status. With a
/// label or field selector, an object that stops matching is sent as `DELETED` and one that starts as `ADDED`.
/// With `allowWatchBookmarks=true`, every [`BOOKMARK_INTERVAL`] without an event sends a `BOOKMARK` whose
/// `resourceVersion` is the revision the watch has seen every change up to (events filtered out by the
/// selectors included), so a client resumes from there, on this replica or another, and knows the stream is
/// alive.
async fn watch(s: ApiState, kind: Kind, prefix: Prefix, q: Query) -> ApiResult {
    let selector = q.label_selector.clone();
    let node = q.node_name.clone();
    let matches = move |v: &Value| {
        let labels: discovery::Labels =
            v.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
        selector.as_ref().is_none_or(|sel| sel.matches(&labels)) && on_node(node.as_deref(), v)
    };
    let (initial, from) = match q.resource_version {
        Some(rv) => (Vec::new(), rv),
        None => {
            let (items, rev) = s.inner.store.list(&prefix, q.label_selector.as_ref()).await?;
            (items, rev)
        }
    };
    let mut visible: HashSet<Key> = HashSet::new();
    let mut first = Vec::with_capacity(initial.len());
    for v in &initial {
        let value = present(v)?;
        if matches(&value) {
            visible.insert(v.key.clone());
            first.push(Ok::<_, std::io::Error>(event_line("ADDED", &value)));
        }
    }
    let events = match s.inner.store.watch(&prefix, from).await {
        Ok(events) => events,
        Err(StoreError::Compacted { requested, compacted }) => {
            let msg = format!("too old resource version: {requested} ({compacted})");
            let line = event_line("ERROR", &status_body(StatusCode::GONE, "Expired", &msg));
            return Ok(stream_response(Body::from(line)));
        }
        Err(e) => return Err(e.into()),
    };
    s.inner.metrics.watches_open.fetch_add(1, Ordering::Relaxed);
    let guard = WatchGuard(s.clone());
    let filtered = q.label_selector.is_some() || q.node_name.is_some();
    // Each store event as (its revision, the line to send if any).
    let lines = events.map(move |event| {
        let _ = &guard;
        let revision = event.as_ref().ok().map(StoreEvent::revision);
        let line = match event {
            Err(StoreError::Compacted { requested, compacted }) => {
                let msg = format!("too old resource version: {requested} ({compacted})");
                Some(event_line("ERROR", &status_body(StatusCode::GONE, "Expired", &msg)))
            }
            Err(e) => Some(event_line(
                "ERROR",
                &status_body(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string()),
            )),
            Ok(StoreEvent::Put { object, created }) => match present(&object) {
                Err(_) => None,
                Ok(value) if matches(&value) => {
                    let seen = !visible.insert(object.key.clone());
                    let kind = if created || (filtered && !seen) { "ADDED" } else { "MODIFIED" };
                    Some(event_line(kind, &value))
                }
                Ok(value) => visible.remove(&object.key).then(|| event_line("DELETED", &value)),
            },
            Ok(StoreEvent::Delete { key, revision, prev }) => {
                let was_visible = visible.remove(&key) || !filtered;
                let prev = prev.and_then(|p| serde_json::from_slice::<Value>(&p).ok());
                // The last value decides: it is what the client last saw matching (in this stream or, for a
                // watch resumed from a revision, before it).
                let send = match &prev {
                    Some(value) => matches(value),
                    None => was_visible,
                };
                let mut value =
                    prev.unwrap_or_else(|| json!({"metadata": {"name": key.name, "namespace": key.namespace}}));
                object::set_resource_version(&mut value, revision);
                send.then(|| event_line("DELETED", &value))
            }
        };
        (revision, line)
    });
    let rest = if q.bookmarks {
        with_bookmarks(lines, kind, from).boxed()
    } else {
        lines.filter_map(|(_, line)| futures::future::ready(line.map(Ok::<_, std::io::Error>))).boxed()
    };
    let body = futures::stream::iter(first).chain(rest);
    Ok(stream_response(Body::from_stream(body)))
}

/// The lines of `events`, with a `BOOKMARK` after every [`BOOKMARK_INTERVAL`] in which no line was sent.
fn with_bookmarks(
    events: impl futures::Stream<Item = (Option<u64>, Option<Bytes>)> + Send + 'static,
    kind: Kind,
    from: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let idle_until = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
    futures::stream::unfold(
        (events.boxed(), from, idle_until),
        move |(mut events, mut seen, mut idle_until)| async move {
            loop {
                match tokio::time::timeout_at(idle_until, events.next()).await {
                    Ok(None) => return None,
                    Ok(Some((revision, line))) => {
                        seen = seen.max(revision.unwrap_or(0));
                        if let Some(line) = line {
                            let idle_until = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                            return Some((Ok(line), (events, seen, idle_until)));
                        }
                    }
                    Err(_) => {
                        idle_until = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                        return Some((Ok(bookmark_line(kind, seen)), (events, seen, idle_until)));
                    }
                }
            }
        },
    )
}

fn stream_response(body: Body) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, body).into_response()
}

// ---------------------------------------------------------------------------------------------------------
// Discovery

/// The registry instance's epoch as it appears on the wire.
pub fn epoch_string(registry: &Registry) -> String {
    format!("{:016x}", registry.epoch())
}

fn discovery_registry(s: &ApiState) -> Result<Arc<Registry>, ApiError> {
    s.inner
        .registry
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "this server has no registry"))
}

/// 503 until the registry's writer has published its first complete view, so that a mirror never replaces
/// its last good state with the empty registry of a server that has just restarted.
async fn discovery_snapshot(State(s): State<ApiState>) -> ApiResult {
    let registry = discovery_registry(&s)?;
    if !registry.is_synced() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotSynced",
            "the registry is not yet synchronized with the store (controllers starting or not running)",
        ));
    }
    let snapshot = registry.snapshot();
    let body = DiscoverySnapshot {
        epoch: epoch_string(&registry),
        revision: snapshot.revision(),
        objects: snapshot.objects(&Selector::everything()),
    };
    let bytes = serde_json::to_vec(&body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok((StatusCode::OK, headers, bytes).into_response())
}

/// `GET /discovery/v1/endpoints?selector=S[&selector=S2][&namespace=NS]`: ready endpoints matching any
/// selector. `?watch=true&revision=N&selector=S[&epoch=E]`: the registry's change stream after revision N,
/// with an empty line every [`DISCOVERY_HEARTBEAT`] while idle. When `epoch` names another registry
/// instance (the server restarted) or N is ahead of the registry, the stream is one `Relist`.
async fn discovery_endpoints(State(s): State<ApiState>, RawQuery(q): RawQuery) -> ApiResult {
    let q = parse_query(q)?;
    let registry = discovery_registry(&s)?;
    if q.watch {
        if q.selectors.len() > 1 {
            return Err(ApiError::bad_request("query parameter selector: a watch takes at most one selector"));
        }
        let current = registry.revision();
        let foreign = q.epoch.as_ref().is_some_and(|e| *e != epoch_string(&registry));
        if foreign || q.revision.is_some_and(|r| r > current) {
            let event = discovery::WatchEvent::Relist { revision: current };
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            return Ok(stream_response(Body::from(line)));
        }
        let selector = q.selectors.into_iter().next().unwrap_or_default();
        let from = q.revision.unwrap_or(current);
        let watch = registry.watch(selector, from);
        let mut heartbeat = tokio::time::interval(DISCOVERY_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let stream = futures::stream::unfold((watch, heartbeat), |(mut w, mut hb)| async move {
            // `Watch::next` keeps its position in the watch itself, so dropping it for a heartbeat loses nothing.
            let line = tokio::select! {
                event = w.next() => {
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    hb.reset();
                    line
                }
                _ = hb.tick() => b"\n".to_vec(),
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(line)), (w, hb)))
        });
        return Ok(stream_response(Body::from_stream(stream)));
    }
    let snapshot = registry.snapshot();
    let selectors = if q.selectors.is_empty() { vec![Selector::everything()] } else { q.selectors };
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    for sel in &selectors {
        for ep in snapshot.endpoints(q.namespace.as_deref(), sel) {
            if ep.accepts_new() && seen.insert((ep.namespace.clone(), ep.name.clone())) {
                items.push(ep);
            }
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"revision": snapshot.revision(), "items": items})))
}
