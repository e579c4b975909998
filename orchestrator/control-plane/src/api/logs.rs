//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: a pod's logs, relayed from the agent of its node as the
//! Kubernetes API server relays the kubelet's. The API finds the pod's node, reads the agent endpoint the
//! agent advertises in the node's status (`daemonEndpoints.agentEndpoint.Port` at its `InternalIP`), calls it
//! with the cluster token and streams the answer back unchanged, so `follow` streams end to end.
//!
//! Clients never talk to agents: the agent's listener only has to trust the API server's token, and a CLI
//! needs to reach nothing but the API.

use super::{present, ApiError, ApiResult, ApiState};
use crate::store::Key;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

/// How long the API waits to connect to an agent before reporting it unreachable.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The query of a log request, as Kubernetes names it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct LogQuery {
    container: Option<String>,
    follow: bool,
    tail_lines: Option<u64>,
    previous: bool,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::bad_request(format!("query parameter {name}: {v:?} is not true or false"))),
    }
}

pub(super) fn parse_log_query(raw: Option<&str>) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "container" if !v.is_empty() => q.container = Some(v.into_owned()),
            "follow" => q.follow = parse_bool("follow", &v)?,
            "previous" => q.previous = parse_bool("previous", &v)?,
            "tailLines" if !v.is_empty() => {
                q.tail_lines = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("query parameter tailLines: {v:?} is not a line count"))
                })?)
            }
            _ => {}
        }
    }
    Ok(q)
}

fn unavailable(reason: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
}

/// `http://IP:PORT` of the agent of `node`, from the status the agent wrote.
pub(super) fn agent_address(node_name: &str, node: &Value) -> Result<std::net::SocketAddr, ApiError> {
    let port = node
        .pointer("/status/daemonEndpoints/agentEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=u64::from(u16::MAX)).contains(p))
        .ok_or_else(|| {
            unavailable(
                "NoAgentEndpoint",
                format!("node {node_name} advertises no agent endpoint (status.daemonEndpoints.agentEndpoint.Port)"),
            )
        })?;
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .ok_or_else(|| {
            unavailable(
                "NoAgentEndpoint",
                format!("node {node_name} advertises no InternalIP address (status.addresses)"),
            )
        })?;
    Ok(std::net::SocketAddr::new(ip, port as u16))
}

pub(super) async fn pod_log(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let q = parse_log_query(raw.as_deref())?;
    let key = Key::new("pods", ns.clone(), name.clone());
    let pod = match s.inner.store.get(&key).await? {
        Some(v) => present(&v)?,
        None => return Err(ApiError::not_found(format!("pods {ns}/{name} not found"))),
    };
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {ns}/{name} is not bound to a node yet: no logs")))?
        .to_string();
    let node = match s.inner.store.get(&Key::new("nodes", String::new(), node_name.clone())).await? {
        Some(v) => present(&v)?,
        None => {
            return Err(unavailable("NodeNotFound", format!("node {node_name} of pod {ns}/{name} is not registered")))
        }
    };
    let addr = agent_address(&node_name, &node)?;
    let (http, base) = match &s.inner.agent_tls {
        // The agent's certificate names its node, not its address: connect to the address, verify the name.
        Some(tls) => {
            let http = agent_tls_client(tls, &node_name, addr).map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("agent client: {e}"))
            })?;
            (http, format!("https://{node_name}:{}", addr.port()))
        }
        None => {
            let http = agent_client().map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("agent client: {e}"))
            })?;
            (http, format!("http://{addr}"))
        }
    };
    let url = format!("{base}/logs/{ns}/{name}");
    let mut req = http.get(&url).query(&[("follow", q.follow), ("previous", q.previous)]);
    if let Some(c) = &q.container {
        req = req.query(&[("container", c)]);
    }
    if let Some(t) = q.tail_lines {
        req = req.query(&[("tail", t)]);
    }
    if s.inner.agent_tls.is_none() {
        if let Some(t) = &s.inner.token {
            req = req.bearer_auth(t);
        }
    }
    let resp = req.send().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "AgentUnreachable",
            format!("cannot reach the agent of node {node_name} at {addr}: {e}"),
        )
    })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let text = text.trim();
        return Err(match status.as_u16() {
            // The agent refusing our token is a cluster misconfiguration, not the caller's fault.
            401 | 403 => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "AgentRefused",
                format!("the agent of node {node_name} refused the API server's credential: {text}"),
            ),
            404 => ApiError::not_found(format!("node {node_name}: {text}")),
            400 => ApiError::bad_request(format!("node {node_name}: {text}")),
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "AgentError",
                format!("the agent of node {node_name} answered {status}: {text}"),
            ),
        });
    }
    let body = Body::from_stream(resp.bytes_stream().map(|c| c.map_err(std::io::Error::other)));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

/// A client for one agent over mutual TLS: `node` resolves to `addr`, so the certificate is checked for the
/// node's name. Built per request: log reads are rare, and each node has its own name to resolve.
fn agent_tls_client(
    tls: &rustls::ClientConfig,
    node: &str,
    addr: std::net::SocketAddr,
) -> Result<reqwest::Client, reqwest::Error> {
    pki::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(AGENT_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tls_backend_preconfigured(tls.clone())
        .resolve(node, addr)
        .build()
}

/// The HTTP client the API calls agents with when it has no CA: a connect timeout, no overall timeout
/// (follow streams). Built per request, as the TLS one is.
/// It only speaks plain HTTP (a TLS API calls agents with `agent_tls_client`), so it trusts no roots: a host
/// without system CA certificates (a minimal container) would otherwise fail to build it.
fn agent_client() -> Result<reqwest::Client, reqwest::Error> {
    pki::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(AGENT_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tls_certs_only(Vec::new())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_names_the_bad_field() {
        let q = parse_log_query(Some("container=app&follow=true&tailLines=5&previous=0")).unwrap();
        assert_eq!(q, LogQuery { container: Some("app".into()), follow: true, tail_lines: Some(5), previous: false });
        assert_eq!(parse_log_query(None).unwrap(), LogQuery::default());
        let e = parse_log_query(Some("tailLines=-1")).unwrap_err();
        assert!(e.message.contains("tailLines"), "{}", e.message);
        let e = parse_log_query(Some("follow=maybe")).unwrap_err();
        assert!(e.message.contains("follow"), "{}", e.message);
    }

    #[test]
    fn agent_url_from_node_status() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"},
            {"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"agentEndpoint": {"Port": 4100}}}});
        assert_eq!(agent_address("n1", &node).unwrap().to_string(), "127.0.0.1:4100");
        let v6 = json!({"status": {"addresses": [{"type": "InternalIP", "address": "::1"}],
            "daemonEndpoints": {"agentEndpoint": {"Port": 4100}}}});
        assert_eq!(agent_address("n1", &v6).unwrap().to_string(), "[::1]:4100");
        let e = agent_address("n1", &json!({"status": {}})).unwrap_err();
        assert!(e.message.contains("node n1") && e.code == StatusCode::SERVICE_UNAVAILABLE, "{}", e.message);
        let no_ip = json!({"status": {"daemonEndpoints": {"agentEndpoint": {"Port": 4100}}}});
        assert!(agent_address("n1", &no_ip).unwrap_err().message.contains("InternalIP"));
    }
}
