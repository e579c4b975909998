//! Authentication and authorization of the API over real HTTP on loopback: tokens issued and revoked through
//! the API, a node joining with a join token and then reaching only what its pods need, a proxy reaching only
//! discovery, and credentials that are revoked, expired, of the wrong usage or malformed getting 401 without
//! their text echoed.

use control_plane::api::{self, ApiState, CertificateAuthority, SignError};
use control_plane::store::MemoryStore;
use discovery::Registry;
use futures::StreamExt;
use model::clock::ManualClock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const BOOTSTRAP: &str = "b00757a9b00757a9b00757a9b00757a9b00757a9b00757a9b00757a9b00757a9";
const CA_HASH: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nZmFrZSBjYQ==\n-----END CERTIFICATE-----\n";

struct FakeCa;

impl CertificateAuthority for FakeCa {
    fn ca_pem(&self) -> &str {
        CA_PEM
    }
    fn ca_hash(&self) -> &str {
        CA_HASH
    }
    fn sign_node_csr(&self, node: &str, csr_pem: &str) -> Result<String, SignError> {
        if !csr_pem.contains("CERTIFICATE REQUEST") {
            return Err(SignError::InvalidCsr("not a PEM certificate request".into()));
        }
        Ok(format!("-----BEGIN CERTIFICATE-----\nfor {node}\n-----END CERTIFICATE-----\n"))
    }
}

/// An API server on 127.0.0.1:0 with a memory store, a synced registry, a manual clock and (optionally) the
/// fake CA; stopped when dropped.
struct Api {
    base: String,
    http: reqwest::Client,
    clock: ManualClock,
    _stop: oneshot::Sender<()>,
}

impl Api {
    async fn start(with_ca: bool) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let registry = Arc::new(Registry::new());
        registry.mark_synced();
        let clock = ManualClock::at_epoch_2026();
        let mut state = ApiState::new(Arc::new(MemoryStore::new()), Some(BOOTSTRAP.into()), Some(registry))
            .with_clock(Arc::new(clock.clone()));
        if with_ca {
            state = state.with_authority(Arc::new(FakeCa));
        }
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(api::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let http = test_support::http().timeout(Duration::from_secs(10)).build().unwrap();
        Api { base, http, clock, _stop: stop }
    }

    /// `(status, body text)`; `token` goes in `Authorization: Bearer`.
    async fn call_text(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let (status, text) = self.call_text(method, path, token, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str, token: &str) -> StatusCode {
        self.call(Method::GET, path, Some(token), None).await.0
    }

    /// As the bootstrap admin; asserts `want`.
    async fn admin(&self, method: Method, path: &str, body: Value, want: StatusCode) -> Value {
        let (status, answer) = self.call(method, path, Some(BOOTSTRAP), Some(body)).await;
        assert_eq!(status, want, "{path}: {answer}");
        answer
    }

    /// A new token (as the bootstrap admin): the full answer.
    async fn token(&self, request: Value) -> Value {
        self.admin(Method::POST, "/api/v1/tokens", request, StatusCode::CREATED).await
    }

    /// Joins as `node` (or as a proxy with `None`) with a fresh join token: the credential.
    async fn join(&self, role: &str, node: Option<&str>) -> String {
        let join = self.token(json!({"role": role, "description": "test"})).await;
        let join = join["token"].as_str().unwrap().to_string();
        let body = node.map(|n| json!({"nodeName": n})).unwrap_or(json!({}));
        let (status, answer) = self.call(Method::POST, "/api/v1/join", Some(&join), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["credential"].as_str().unwrap().to_string()
    }
}

fn pod(name: &str, node: &str, secret: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
               "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}]}})
}

fn secret(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
           "data": {"k": "YQ=="}})
}

fn node_object(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

/// Pods on node-a (referencing Secret `sa`) and node-b (referencing `sb`), and a Secret no pod uses.
async fn seed(api: &Api) {
    for (name, node, sec) in [("pa", "node-a", "sa"), ("pb", "node-b", "sb")] {
        api.admin(Method::POST, "/api/v1/namespaces/default/pods", pod(name, node, sec), StatusCode::CREATED).await;
    }
    for s in ["sa", "sb", "unused"] {
        api.admin(Method::POST, "/api/v1/namespaces/default/secrets", secret(s), StatusCode::CREATED).await;
    }
}

#[tokio::test]
async fn a_node_reaches_only_what_its_pods_need() {
    let api = Api::start(true).await;
    seed(&api).await;
    let a = api.join("node", Some("node-a")).await;
    let ns = "/api/v1/namespaces/default";

    // Pods: only its own, and only listed with its own field selector.
    assert_eq!(api.get(&format!("{ns}/pods/pa"), &a).await, StatusCode::OK);
    assert_eq!(api.get(&format!("{ns}/pods/pb"), &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get("/api/v1/pods", &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get(&format!("{ns}/pods"), &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-b", &a).await, StatusCode::FORBIDDEN);
    let (status, list) =
        api.call(Method::GET, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pa"]);
    assert_eq!(api.get(&format!("{ns}/pods/pa/log"), &a).await, StatusCode::FORBIDDEN, "logs are admin-only");

    // Secrets: only one a pod bound to it references; never a list.
    assert_eq!(api.get(&format!("{ns}/secrets/sa"), &a).await, StatusCode::OK);
    assert_eq!(api.get(&format!("{ns}/secrets/sb"), &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get(&format!("{ns}/secrets/unused"), &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get(&format!("{ns}/secrets"), &a).await, StatusCode::FORBIDDEN);

    // Writes: no Deployments; its own pod's status only.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
    let (status, _) = api.call(Method::POST, &format!("{ns}/deployments"), Some(&a), Some(deployment.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call(Method::POST, "/api/v1/apply", Some(&a), Some(deployment)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let running = json!({"status": {"phase": "Running"}});
    let (status, body) = api.call(Method::PUT, &format!("{ns}/pods/pa/status"), Some(&a), Some(running.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["phase"], "Running");
    let (status, _) = api.call(Method::PUT, &format!("{ns}/pods/pb/status"), Some(&a), Some(running)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call(Method::PUT, &format!("{ns}/pods/pa"), Some(&a), Some(pod("pa", "node-b", "sa"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a node does not rebind pods");

    // Nodes: itself only.
    let (status, _) = api.call(Method::POST, "/api/v1/nodes", Some(&a), Some(node_object("node-b"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api.call(Method::POST, "/api/v1/nodes", Some(&a), Some(node_object("node-a"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(api.get("/api/v1/nodes/node-a", &a).await, StatusCode::OK);
    assert_eq!(api.get("/api/v1/nodes/node-b", &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get("/api/v1/nodes", &a).await, StatusCode::FORBIDDEN);
    let (status, _) = api.call(Method::PUT, "/api/v1/nodes/node-a/status", Some(&a), Some(json!({"status": {}}))).await;
    assert_eq!(status, StatusCode::OK);

    // Its serving certificate, and no one else's; admin-only token endpoints.
    let csr = json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nx\n-----END CERTIFICATE REQUEST-----\n"});
    let (status, body) = api.call(Method::POST, "/api/v1/nodes/node-a/certificate", Some(&a), Some(csr.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["certificate"].as_str().unwrap().contains("for node-a"));
    let (status, _) = api.call(Method::POST, "/api/v1/nodes/node-b/certificate", Some(&a), Some(csr)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api.call(Method::POST, "/api/v1/nodes/node-a/certificate", Some(&a), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().starts_with("csr:"), "{body}");
    let (status, body) =
        api.call(Method::POST, "/api/v1/nodes/node-a/certificate", Some(&a), Some(json!({"csr": "junk"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(api.get("/api/v1/tokens", &a).await, StatusCode::FORBIDDEN);
    assert_eq!(api.get("/discovery/v1/snapshot", &a).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forbidden_is_a_status_naming_the_identity_and_the_verb() {
    let api = Api::start(true).await;
    seed(&api).await;
    let a = api.join("node", Some("node-a")).await;
    let (status, body) = api.call(Method::GET, "/api/v1/namespaces/default/pods/pb", Some(&a), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(body["code"], 403);
    assert_eq!(body["details"], json!({"name": "pb", "kind": "pods"}));
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "pods \"pb\" is forbidden: User \"system:node:node-a\" cannot get resource \"pods\" in the namespace \"default\""
        ),
        "{message}"
    );
    let (_, body) = api.call(Method::DELETE, "/api/v1/namespaces/default/secrets/sa", Some(&a), None).await;
    assert!(body["message"].as_str().unwrap().contains("cannot delete resource \"secrets\""), "{body}");
}

#[tokio::test]
async fn a_proxy_reads_discovery_only() {
    let api = Api::start(true).await;
    seed(&api).await;
    let joined = api.join("proxy", None).await;
    let issued = api.token(json!({"role": "proxy", "usage": "credential"})).await;
    let issued = issued["token"].as_str().unwrap().to_string();
    for proxy in [joined, issued] {
        assert_eq!(api.get("/discovery/v1/snapshot", &proxy).await, StatusCode::OK);
        assert_eq!(api.get("/discovery/v1/endpoints", &proxy).await, StatusCode::OK);
        assert_eq!(api.get("/api/v1/namespaces/default/secrets/sa", &proxy).await, StatusCode::FORBIDDEN);
        assert_eq!(api.get("/api/v1/namespaces/default/secrets", &proxy).await, StatusCode::FORBIDDEN);
        assert_eq!(api.get("/api/v1/pods", &proxy).await, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn a_revoked_credential_is_refused_within_a_second() {
    let api = Api::start(true).await;
    let a = api.join("node", Some("node-a")).await;
    let own = "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a";
    assert_eq!(api.get(own, &a).await, StatusCode::OK);
    let id = a.split_once('.').unwrap().0;
    let removed = api.admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), json!({}), StatusCode::OK).await;
    assert_eq!(removed["id"], id);
    assert!(removed.get("secretHash").is_none());
    let revoked = Instant::now();
    let refused = loop {
        let status = api.get(own, &a).await;
        if status == StatusCode::UNAUTHORIZED || revoked.elapsed() > Duration::from_secs(1) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused, StatusCode::UNAUTHORIZED, "still accepted {:?} after revocation", revoked.elapsed());
    // Unknown ids and malformed ones.
    api.admin(Method::DELETE, &format!("/api/v1/tokens/{id}"), json!({}), StatusCode::NOT_FOUND).await;
    let body = api.admin(Method::DELETE, "/api/v1/tokens/nope", json!({}), StatusCode::BAD_REQUEST).await;
    assert!(body["message"].as_str().unwrap().starts_with("id:"), "{body}");
}

#[tokio::test]
async fn expired_join_and_malformed_tokens_are_refused_without_echo() {
    let api = Api::start(true).await;
    let short = api.token(json!({"role": "proxy", "usage": "credential", "ttlSeconds": 60})).await;
    let short = short["token"].as_str().unwrap().to_string();
    assert!(short.len() == 77 && !short.starts_with("berth1"), "a credential is <id>.<secret>");
    assert_eq!(api.get("/discovery/v1/snapshot", &short).await, StatusCode::OK);
    api.clock.advance(Duration::from_secs(61));
    let (status, body) = api.call(Method::GET, "/discovery/v1/snapshot", Some(&short), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");

    // A join token (whole, or its credential part) opens nothing but /api/v1/join.
    let join = api.token(json!({"role": "admin"})).await;
    let join = join["token"].as_str().unwrap().to_string();
    assert!(join.starts_with(&format!("berth1::sha256:{CA_HASH}::")), "{join}");
    let part = join.rsplit_once("::").unwrap().1.to_string();
    for presented in [join.as_str(), part.as_str()] {
        let (status, text) = api.call_text(Method::GET, "/api/v1/tokens", Some(presented), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
        assert!(!text.contains(&part[13..]), "{text}");
    }
    // A credential does not join.
    let (status, _) = api.call(Method::POST, "/api/v1/join", Some(&short), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let secretish = "0123456789ab.notasecretbutcouldbeone";
    let wrong = format!("{}.{}", &part[..12], "0".repeat(64));
    for presented in [secretish, "just-a-guess-SEKRIT", wrong.as_str()] {
        let resp = api
            .http
            .get(format!("{}/api/v1/namespaces/default/pods", api.base))
            .bearer_auth(presented)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((body["kind"].as_str(), body["reason"].as_str()), (Some("Status"), Some("Unauthorized")));
        for fragment in ["notasecret", "SEKRIT", "0000000000"] {
            assert!(!text.contains(fragment), "{text}");
        }
    }
    let (status, _) = api.call(Method::GET, "/api/v1/pods", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_token_list_shows_no_secret_or_hash() {
    let api = Api::start(true).await;
    let join = api.token(json!({"role": "node", "ttlSeconds": 3600, "description": "rack 4"})).await;
    assert_eq!((join["role"].as_str(), join["usage"].as_str()), (Some("node"), Some("join")));
    assert!(join.get("secretHash").is_none() && join["expires"].is_string(), "{join}");
    let cred = api.token(json!({"role": "node", "usage": "credential", "nodeName": "node-x"})).await;
    assert_eq!(cred["node"], "node-x");
    let joined = api.join("node", Some("node-a")).await;
    let (status, text) = api.call_text(Method::GET, "/api/v1/tokens", Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["kind"], "TokenList");
    assert_eq!(list["items"].as_array().unwrap().len(), 4, "{list}");
    assert!(!text.contains("secretHash"), "{text}");
    for token in [join["token"].as_str().unwrap(), cred["token"].as_str().unwrap(), &joined] {
        let secret = token.rsplit_once('.').unwrap().1;
        assert!(!text.contains(secret), "{text}");
    }
    let issued: Vec<&Value> = list["items"].as_array().unwrap().iter().filter(|t| t["issuedBy"].is_string()).collect();
    assert_eq!(issued.len(), 1, "the joined credential names its join token");
    // Bad requests name the field.
    let body = api.admin(Method::POST, "/api/v1/tokens", json!({"role": "root"}), StatusCode::BAD_REQUEST).await;
    assert!(body["message"].as_str().unwrap().starts_with("role:"), "{body}");
    let join_text = join["token"].as_str().unwrap();
    let (status, body) = api.call(Method::POST, "/api/v1/join", Some(join_text), Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().starts_with("nodeName:"), "{body}");
    let (status, body) =
        api.call(Method::POST, "/api/v1/join", Some(join_text), Some(json!({"nodeName": "Not_DNS"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().starts_with("nodeName:"), "{body}");
}

#[tokio::test]
async fn join_answers_the_identity_and_the_ca_and_cacerts_is_open() {
    let api = Api::start(true).await;
    let join = api.token(json!({"role": "node"})).await;
    let (status, answer) = api
        .call(Method::POST, "/api/v1/join", Some(join["token"].as_str().unwrap()), Some(json!({"nodeName": "node-1"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["identity"], "system:node:node-1");
    assert_eq!((answer["role"].as_str(), answer["nodeName"].as_str()), (Some("node"), Some("node-1")));
    assert_eq!(answer["caCertificate"], CA_PEM);
    let (status, text) = api.call_text(Method::GET, "/cacerts", None, None).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, CA_PEM));
    // A join token for another cluster's CA is refused.
    let other = join["token"].as_str().unwrap().replace(CA_HASH, &"1".repeat(64));
    let (status, _) = api.call(Method::POST, "/api/v1/join", Some(&other), Some(json!({"nodeName": "n"}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Without a CA: no /cacerts, no certificates, and join tokens are the credential part alone.
    let plain = Api::start(false).await;
    let (status, body) = plain.call(Method::GET, "/cacerts", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let join = plain.token(json!({"role": "node"})).await;
    let join = join["token"].as_str().unwrap();
    assert!(!join.starts_with("berth1"), "{join}");
    let (status, answer) = plain.call(Method::POST, "/api/v1/join", Some(join), Some(json!({"nodeName": "n1"}))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.get("caCertificate").is_none());
    let csr = json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\n"});
    let (status, body) = plain.call(Method::POST, "/api/v1/nodes/n1/certificate", Some(BOOTSTRAP), Some(csr)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

/// Reads NDJSON watch events `(type, name)` until `n` arrived.
async fn events(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut Vec<u8>,
    n: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            out.push((
                v["type"].as_str().unwrap().to_string(),
                v["object"]["metadata"]["name"].as_str().unwrap().into(),
            ));
            if out.len() == n {
                return out;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a watch event");
        buf.extend_from_slice(&chunk.unwrap().unwrap());
    }
    out
}

#[tokio::test]
async fn a_node_field_selector_watch_sees_pods_enter_and_leave() {
    let api = Api::start(true).await;
    seed(&api).await;
    let a = api.join("node", Some("node-a")).await;
    let resp = api
        .http
        .get(format!("{}/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3D%3Dnode-a", api.base))
        .bearer_auth(&a)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    assert_eq!(events(&mut stream, &mut buf, 1).await, [("ADDED".into(), "pa".into())]);

    let ns = "/api/v1/namespaces/default/pods";
    let pod_b = api.admin(Method::GET, &format!("{ns}/pb"), json!(null), StatusCode::OK).await;
    let mut moved = pod_b.clone();
    moved["spec"]["nodeName"] = json!("node-a");
    api.admin(Method::PUT, &format!("{ns}/pb"), moved, StatusCode::OK).await;
    let pod_a = api.admin(Method::GET, &format!("{ns}/pa"), json!(null), StatusCode::OK).await;
    let mut away = pod_a.clone();
    away["spec"]["nodeName"] = json!("node-b");
    api.admin(Method::PUT, &format!("{ns}/pa"), away, StatusCode::OK).await;
    api.admin(Method::POST, ns, pod("pc", "node-c", "sa"), StatusCode::CREATED).await;
    api.admin(Method::DELETE, &format!("{ns}/pb"), json!(null), StatusCode::OK).await;
    let seen = events(&mut stream, &mut buf, 3).await;
    let want: Vec<(String, String)> = [("ADDED", "pb"), ("DELETED", "pa"), ("DELETED", "pb")]
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect();
    assert_eq!(seen, want);

    // Any other field selector is refused, naming the parameter.
    let (status, body) =
        api.call(Method::GET, "/api/v1/pods?fieldSelector=metadata.name%3Dpa", Some(BOOTSTRAP), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("fieldSelector"), "{body}");
    let (status, _) = api
        .call(Method::GET, "/api/v1/namespaces/default/secrets?fieldSelector=spec.nodeName%3Da", Some(BOOTSTRAP), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
