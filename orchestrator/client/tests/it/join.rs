//! The join flow and the client's TLS trust, against a fake API server that records every request it sees.
//! What matters most is what the server did *not* see: no secret reaches a server that cannot prove it holds
//! the pinned CA.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use client::{Client, ClientError, JoinError};
use futures::StreamExt;
use parking_lot::Mutex;
use pki::{ClientAuth, ClusterCa, Identity};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const ID: &str = "0123456789ab";
const SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const CREDENTIAL_SECRET: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// No test step may take longer than this.
const BOUND: Duration = Duration::from_secs(20);

/// One request as the fake server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    authorization: Option<String>,
}

#[derive(Clone)]
struct FakeState {
    cacerts: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct FakeApi {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeApi {
    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    fn authorizations(&self) -> Vec<String> {
        self.seen().into_iter().filter_map(|s| s.authorization).collect()
    }
}

/// A server whose certificate `ca` signed, presenting `[leaf, ca]`, and answering `/cacerts` with `cacerts`.
async fn fake_api(ca: &ClusterCa, cacerts: &str) -> FakeApi {
    let leaf = ca.issue_server(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let identity = Identity::from_pem(&format!("{}{}", leaf.cert_pem, ca.cert().pem()), &leaf.key_pem).unwrap();
    let config = pki::server_config(&identity, ClientAuth::None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app =
        axum::Router::new().fallback(handle).with_state(FakeState { cacerts: cacerts.to_string(), seen: seen.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pki::serve_tls(listener, config, app, async move {
        let _ = stopped.await;
    }));
    FakeApi { addr, seen, _stop: stop }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body =
        json!({"kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

async fn handle(State(s): State<FakeState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let authorization = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    s.seen.lock().push(Seen {
        method: parts.method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
    });
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    match (parts.method, path.as_str()) {
        (Method::GET, "/cacerts") => s.cacerts.clone().into_response(),
        (Method::POST, "/api/v1/join") => {
            if authorization.as_deref() != Some(&format!("Bearer {ID}.{SECRET}")) {
                return status(StatusCode::UNAUTHORIZED, "Unauthorized", "join token unknown, expired or revoked");
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let node = request["nodeName"].as_str().unwrap_or("").to_string();
            axum::Json(json!({
                "credential": format!("bbbbbbbbbbbb.{CREDENTIAL_SECRET}"),
                "role": "node",
                "nodeName": node,
                "identity": format!("system:node:{node}"),
            }))
            .into_response()
        }
        (Method::GET, "/api/v1/pods") if query.contains("watch=true") => {
            let event = json!({"type": "ADDED", "object": {"metadata": {"name": "p"}, "spec": {"nodeName": "node-1"}}});
            format!("{event}\n").into_response()
        }
        (Method::GET, "/api/v1/pods") => axum::Json(json!({"kind": "PodList", "items": []})).into_response(),
        _ => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
    }
}

fn join_token(ca: &ClusterCa) -> String {
    format!("berth1::sha256:{}::{ID}.{SECRET}", ca.cert().hash())
}

async fn join(server: &str, token: &str, node: Option<&str>) -> Result<client::Joined, JoinError> {
    tokio::time::timeout(BOUND, client::join(server, token, node)).await.expect("join is bounded")
}

#[tokio::test]
async fn a_join_returns_the_credential_and_the_ca_and_sends_the_secret_only_after_the_ca_checked_out() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let api = fake_api(&ca, ca.cert().pem()).await;
    let joined = join(&api.url(), &join_token(&ca), Some("node-1")).await.unwrap();
    assert_eq!(joined.ca.hash(), ca.cert().hash());
    assert_eq!(joined.credential, format!("bbbbbbbbbbbb.{CREDENTIAL_SECRET}"));
    assert_eq!((joined.role.as_str(), joined.identity.as_str()), ("node", "system:node:node-1"));
    assert_eq!(joined.node_name.as_deref(), Some("node-1"));
    assert!(!format!("{joined:?}").contains(CREDENTIAL_SECRET));

    let seen = api.seen();
    let paths: Vec<_> = seen.iter().map(|s| (s.method.as_str(), s.path.as_str(), s.authorization.is_some())).collect();
    assert_eq!(paths, [("GET", "/cacerts", false), ("POST", "/api/v1/join", true)]);
    assert_eq!(api.authorizations(), [format!("Bearer {ID}.{SECRET}")]);

    // The credential works with the CA it came with.
    let client = Client::with_ca(&api.url(), &joined.ca, Some(joined.credential.clone())).unwrap();
    assert!(client.list_pods_on_node("node-1").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_server_presenting_another_ca_never_receives_the_join_secret() {
    let pinned = ClusterCa::generate("berth-ca").unwrap();
    let impostor = ClusterCa::generate("berth-ca").unwrap();
    // The impostor serves its own CA, consistently, in its chain and at /cacerts.
    let api = fake_api(&impostor, impostor.cert().pem()).await;
    let err = join(&api.url(), &join_token(&pinned), Some("node-1")).await.unwrap_err();
    assert!(matches!(err, JoinError::Connect { .. }), "{err}");
    assert!(api.authorizations().is_empty(), "no Authorization header may reach it: {:?}", api.seen());
    assert!(api.seen().is_empty(), "not even /cacerts is requested over an unverified connection");
    assert!(!err.to_string().contains(SECRET));
}

#[tokio::test]
async fn a_served_ca_other_than_the_pinned_one_is_a_mismatch_and_no_secret_is_sent() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let other = ClusterCa::generate("berth-ca").unwrap();
    // The handshake proves the pinned CA, but /cacerts hands out another certificate.
    let api = fake_api(&ca, other.cert().pem()).await;
    match join(&api.url(), &join_token(&ca), Some("node-1")).await {
        Err(JoinError::CaMismatch { expected, served }) => {
            assert_eq!((expected, served), (ca.cert().hash(), other.cert().hash()));
        }
        other => panic!("expected CaMismatch, got {other:?}"),
    }
    assert!(api.authorizations().is_empty(), "{:?}", api.seen());
}

#[tokio::test]
async fn a_refused_join_surfaces_the_servers_message() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let api = fake_api(&ca, ca.cert().pem()).await;
    let wrong = format!("berth1::sha256:{}::{ID}.{}", ca.cert().hash(), "1".repeat(64));
    match join(&api.url(), &wrong, Some("node-1")).await {
        Err(e @ JoinError::Api { code: 401, .. }) => {
            assert!(e.to_string().contains("join token unknown, expired or revoked"), "{e}");
            assert!(!e.to_string().contains(&"1".repeat(64)), "{e}");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn joining_needs_https() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let err = join("http://127.0.0.1:1", &join_token(&ca), None).await.unwrap_err();
    assert!(matches!(err, JoinError::Url { .. }), "{err}");
    assert!(err.to_string().contains("https://"), "{err}");
    let err = join("https://127.0.0.1:1", "berth1::nonsense", None).await.unwrap_err();
    assert!(matches!(err, JoinError::Token { .. }), "{err}");
}

#[tokio::test]
async fn a_client_with_another_ca_fails_before_any_header_is_sent() {
    let ca = ClusterCa::generate("berth-ca").unwrap();
    let api = fake_api(&ca, ca.cert().pem()).await;
    let other = ClusterCa::generate("berth-ca").unwrap();
    let client = Client::with_ca(&api.url(), other.cert(), Some(format!("{ID}.{SECRET}"))).unwrap();
    let err = tokio::time::timeout(BOUND, client.list_pods_on_node("node-1")).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains(SECRET), "{err}");
    assert!(api.seen().is_empty(), "the server saw nothing: {:?}", api.seen());

    // With the right CA, the same request goes through, token and field selector included.
    let client = Client::with_ca(&api.url(), ca.cert(), Some(format!("{ID}.{SECRET}"))).unwrap();
    assert!(client.list_pods_on_node("node-1").await.unwrap().is_empty());
    let mut watch = Box::pin(client.watch_pods_on_node("node-1", Some(7)).await.unwrap());
    let event = tokio::time::timeout(BOUND, watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((event.kind.as_str(), &event.object["metadata"]["name"]), ("ADDED", &json!("p")));
    let seen = api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].query, "fieldSelector=spec.nodeName%3Dnode-1");
    assert_eq!(
        seen[1].query,
        "watch=true&allowWatchBookmarks=true&resourceVersion=7&fieldSelector=spec.nodeName%3Dnode-1"
    );
    assert_eq!(api.authorizations(), [format!("Bearer {ID}.{SECRET}"), format!("Bearer {ID}.{SECRET}")]);
}

#[test]
fn a_plain_client_refuses_https() {
    let err = Client::new("https://berth.example:7070", Some("t".into())).err().expect("refused");
    assert!(matches!(err, ClientError::NeedsCa { .. }));
    assert!(err.to_string().contains("https:// needs the cluster CA"), "{err}");
    assert!(Client::new("HTTPS://berth.example", None).is_err());
    assert!(Client::new("http://127.0.0.1:7070", None).is_ok());
}

#[tokio::test]
async fn a_mirror_of_an_https_server_needs_the_ca() {
    use client::mirror::{Mirror, MirrorConfig};
    let registry = Arc::new(discovery::Registry::new());
    let mut config = MirrorConfig::new("https://127.0.0.1:1", Some(format!("{ID}.{SECRET}")));
    assert!(!format!("{config:?}").contains(SECRET), "Debug omits the token");
    let err = Mirror::start(config.clone(), registry.clone()).err().expect("refused without a CA");
    assert!(err.to_string().contains("needs the cluster CA"), "{err}");
    config.ca = Some(ClusterCa::generate("berth-ca").unwrap().cert().clone());
    assert!(Mirror::start(config, registry).is_ok());
}
