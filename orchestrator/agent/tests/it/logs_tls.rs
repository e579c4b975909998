//! The logs listener with the cluster CA: TLS with a certificate the control plane signed for the node, and
//! only the API server's client certificate gets through. Real time (TLS handshakes), bounded waits.

use crate::worker::{pod, ready, start_agent_with, FakeRuntime};
use agent::{AgentConfig, MemoryControlPlane};
use pki::{ClusterCa, Identity, APISERVER_NAME};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const NODE: &str = "node-tls";

fn identity(ca: &ClusterCa, name: &str) -> Identity {
    let issued = ca.issue_client(name).unwrap();
    Identity::from_pem(&issued.cert_pem, &issued.key_pem).unwrap()
}

/// A client that trusts `ca`, presents `identity`, and reaches the node by its name (what the API server
/// checks in the agent's certificate) at `addr`.
fn client(ca: &ClusterCa, identity: Option<&Identity>, addr: SocketAddr) -> reqwest::Client {
    let builder = test_support::http();
    builder
        .tls_backend_preconfigured(pki::client_config(ca.cert(), identity).unwrap())
        .resolve(NODE, addr)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The status of `GET url`, or `None` when TLS refused the client (TLS 1.3 may report a refused client
/// certificate only on the first read).
async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = client.get(url).send().await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

fn config(ca: &ClusterCa) -> AgentConfig {
    let mut cfg = AgentConfig::new(NODE, "/nonexistent-fake-runtime-needs-no-dir");
    cfg.ca = Some(ca.cert().clone());
    // Ignored with a CA: mTLS is the authentication.
    cfg.logs_token = Some("unused-token".into());
    cfg
}

fn on_node(name: &str) -> serde_json::Value {
    let mut p = pod(name, json!({"name": "app", "command": ["x"]}));
    p["spec"]["nodeName"] = json!(NODE);
    p
}

#[tokio::test]
async fn only_the_apiserver_client_certificate_reaches_the_logs_handler() {
    let ca = Arc::new(ClusterCa::generate("berth-ca").unwrap());
    let cp = MemoryControlPlane::new();
    cp.set_ca(ca.clone());
    let mut h = start_agent_with(config(&ca), cp, Arc::new(FakeRuntime::default()));
    let addr = tokio::time::timeout(Duration::from_secs(10), &mut h.logs).await.unwrap().expect("agent ready");
    h.cp.put_pod(on_node("logme"));
    h.until("logme", "ready", ready).await;

    let base = format!("https://{NODE}:{}", addr.port());
    let apiserver = client(&ca, Some(&identity(&ca, APISERVER_NAME)), addr);
    let (code, body) = test_support::eventually("the TLS logs listener", Duration::from_secs(20), async || {
        get(&apiserver, &format!("{base}/logs/default/logme")).await
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("log of c"), "no bearer token needed: {body}");
    assert_eq!(get(&apiserver, &format!("{base}/logs/default/nope")).await.map(|r| r.0), Some(404));

    let other_ca = ClusterCa::generate("berth-ca").unwrap();
    let refused = [
        ("no certificate", client(&ca, None, addr)),
        ("a node's certificate", client(&ca, Some(&identity(&ca, NODE)), addr)),
        ("another CA's API server certificate", client(&ca, Some(&identity(&other_ca, APISERVER_NAME)), addr)),
    ];
    for (what, c) in refused {
        assert_eq!(get(&c, &format!("{base}/logs/default/logme")).await, None, "{what} must be refused by TLS");
    }
    let plain = test_support::http().timeout(Duration::from_secs(5)).build().unwrap();
    let plain = plain.get(format!("http://{addr}/logs/default/logme")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "no plain HTTP on a TLS listener");
    h.shutdown().await;
}

/// Until the control plane signs its certificate, the agent runs its pods anyway and keeps asking.
#[tokio::test]
async fn pods_run_while_the_certificate_is_retried_and_tls_starts_once_it_arrives() {
    let ca = Arc::new(ClusterCa::generate("berth-ca").unwrap());
    let mut h = start_agent_with(config(&ca), MemoryControlPlane::new(), Arc::new(FakeRuntime::default()));
    let addr = tokio::time::timeout(Duration::from_secs(10), &mut h.logs).await.unwrap().expect("agent ready");
    h.cp.put_pod(on_node("early"));
    h.until("early", "ready without a certificate", ready).await;

    h.cp.set_ca(ca.clone());
    let apiserver = client(&ca, Some(&identity(&ca, APISERVER_NAME)), addr);
    let url = format!("https://{NODE}:{}/logs/default/early", addr.port());
    let (code, _) = test_support::eventually("TLS after the certificate", Duration::from_secs(20), async || {
        get(&apiserver, &url).await
    })
    .await;
    assert_eq!(code, 200);
    h.shutdown().await;
}
