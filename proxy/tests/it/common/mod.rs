//! Test helpers: HTTP backends on their own runtimes (so a test can kill one abruptly), registry objects,
//! and a started proxy on loopback port 0.
#![allow(dead_code)]

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::get;
use discovery::{
    BackendRef, Endpoint, EndpointPort, Object, ObjectKey, ObjectKind, PathMatch, Protocol, Registry, Route, RouteRule,
    Selector, Service, ServicePort, TargetPort,
};
use proxy::{Proxy, ProxyConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const NS: &str = "default";

/// Whether a system tool exists (skips, or fails under `BERTH_REQUIRE_ALL=1`, when it does not).
pub fn require(tool: &str) -> bool {
    test_support::require_tool(tool, "proxy tests with a real client")
}

/// An HTTP backend answering `id=<id> path=<path> <selected headers>` (status 200 unless started with
/// [`Backend::start_with_status`]); `?sleep_ms=N` delays the answer, `/ws` echoes WebSocket messages.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct BackendState {
    id: Arc<str>,
    status: StatusCode,
    hits: Arc<AtomicUsize>,
}

async fn answer(State(st): State<BackendState>, req: Request) -> (StatusCode, String) {
    st.hits.fetch_add(1, Ordering::Relaxed);
    let id = &st.id;
    if let Some(ms) = req.uri().query().and_then(|q| q.strip_prefix("sleep_ms=")).and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let body = format!(
        "id={id} path={} xff={} xfp={} xfh={} rid={} via={} drop={}",
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        h("x-forwarded-for"),
        h("x-forwarded-proto"),
        h("x-forwarded-host"),
        h("x-request-id"),
        h("x-via"),
        h("x-drop"),
    );
    (st.status, body)
}

async fn ws(up: WebSocketUpgrade) -> axum::response::Response {
    up.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if let Message::Text(t) = msg {
                if socket.send(Message::Text(format!("echo:{}", t.as_str()).into())).await.is_err() {
                    break;
                }
            }
        }
    })
}

impl Backend {
    pub fn start(id: &str) -> Backend {
        Self::start_with_status(id, 200)
    }

    /// A backend that answers every request with `status`.
    pub fn start_with_status(id: &str, status: u16) -> Backend {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let state = BackendState {
            id: id.into(),
            status: StatusCode::from_u16(status).expect("a valid status"),
            hits: hits.clone(),
        };
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let app = axum::Router::new().route("/ws", get(ws)).fallback(answer).with_state(state);
            let _ = axum::serve(listener, app).await;
        });
        Backend { id: id.to_string(), addr, hits, rt: Some(rt) }
    }

    /// Requests this backend has answered (started to answer).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Kill abruptly: listener and every open connection close at once.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn service(name: &str) -> Object {
    Object::Service(Arc::new(Service {
        namespace: NS.into(),
        name: name.into(),
        labels: Default::default(),
        selector: Selector::from_labels(&[("app".to_string(), name.to_string())].into_iter().collect()),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
        }],
        balance: Default::default(),
        virtual_ip: None,
        health_check: None,
        retry_on_statuses: Vec::new(),
    }))
}

pub fn endpoint(service: &str, name: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        namespace: NS.into(),
        name: name.into(),
        address: addr.ip(),
        ports: vec![EndpointPort { name: Some("http".into()), port: addr.port(), protocol: Protocol::Tcp }],
        labels: [("app".to_string(), service.to_string())].into_iter().collect(),
        ready: true,
        serving: true,
        terminating: false,
        node: None,
        zone: None,
        weight: 100,
    }
}

pub fn endpoint_key(name: &str) -> ObjectKey {
    ObjectKey { kind: ObjectKind::Endpoint, namespace: NS.into(), name: name.into() }
}

pub fn rule(prefix: &str, service: &str) -> RouteRule {
    RouteRule {
        path: Some(PathMatch::Prefix(prefix.into())),
        methods: vec![],
        headers: vec![],
        backend: BackendRef { service: service.into(), port: None },
        rewrite_prefix: None,
        add_request_headers: vec![],
        remove_request_headers: vec![],
        rate_limit_rps: None,
    }
}

pub fn route(name: &str, hosts: &[&str], rules: Vec<RouteRule>) -> Object {
    Object::Route(Arc::new(Route {
        namespace: NS.into(),
        name: name.into(),
        labels: Default::default(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        rules,
        default_backend: None,
        tls: vec![],
    }))
}

/// A registry with service `web` over `backends` and a catch-all route to it.
pub fn registry_with(backends: &[&Backend]) -> Arc<Registry> {
    let reg = Arc::new(Registry::new());
    reg.put(service("web"));
    for b in backends {
        reg.put(Object::Endpoint(Arc::new(endpoint("web", &b.id, b.addr))));
    }
    reg.put(route("all", &[], vec![rule("/", "web")]));
    reg
}

pub fn config() -> ProxyConfig {
    ProxyConfig { http_listen: vec!["127.0.0.1:0".parse().unwrap()], shutdown_grace_ms: 500, ..ProxyConfig::default() }
}

pub fn start(reg: &Arc<Registry>, cfg: ProxyConfig) -> Proxy {
    Proxy::start(reg.clone(), cfg).expect("proxy starts")
}

pub fn client() -> reqwest::Client {
    test_support::http().timeout(Duration::from_secs(20)).build().unwrap()
}

pub fn id_of(body: &str) -> &str {
    body.split_whitespace().next().and_then(|s| s.strip_prefix("id=")).unwrap_or("")
}
