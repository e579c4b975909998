//! The agent's logs endpoint: `GET /logs/NS/POD?container=&follow=&tail=&previous=` on a small listener of
//! its own (advertised as `status.daemonEndpoints.agentEndpoint.Port` of its Node). Only the API server calls
//! it (`GET /api/v1/namespaces/NS/pods/POD/log` relays here). Two ways to keep everyone else out:
//! - with the cluster CA ([`serve_mtls`]): TLS with the node's own serving certificate, and only a client
//!   certificate from the cluster CA for [`pki::APISERVER_NAME`] gets past the handshake;
//! - without it ([`serve`]): plain HTTP, and the bearer token, required whenever the agent has one.
//!
//! The endpoint only reads what the runtime kept.

use super::control::ControlPlane;
use super::restart::Backoff;
use super::runtime::{LogOptions, Runtime};
use super::PodTable;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct LogsState {
    table: Arc<PodTable>,
    runtime: Arc<dyn Runtime>,
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogQuery {
    pub container: Option<String>,
    pub follow: Option<bool>,
    pub tail: Option<usize>,
    pub previous: Option<bool>,
}

/// How long the first retry of a failed certificate request waits; doubles up to [`CERTIFICATE_RETRY_MAX`].
const CERTIFICATE_RETRY: Duration = Duration::from_millis(500);
const CERTIFICATE_RETRY_MAX: Duration = Duration::from_secs(30);

fn router(table: Arc<PodTable>, runtime: Arc<dyn Runtime>, token: Option<String>) -> Router {
    Router::new()
        .route("/logs/{ns}/{pod}", get(logs))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(LogsState { table, runtime, token })
}

/// Serve the logs endpoint over plain HTTP on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    table: Arc<PodTable>,
    runtime: Arc<dyn Runtime>,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(table, runtime, token)).with_graceful_shutdown(shutdown).await
}

/// What the TLS logs listener needs beyond the plain one.
pub struct MtlsConfig {
    pub control: Arc<dyn ControlPlane>,
    pub node: String,
    /// The cluster CA: the API server's client certificate must chain to it.
    pub ca: pki::CaCert,
}

/// Serve the logs endpoint over TLS on `listener` until `shutdown`, accepting only the API server's client
/// certificate. The serving certificate comes from the control plane (for a key made here); until it does,
/// this retries with back-off and connections wait in the listen queue: pods run meanwhile.
pub async fn serve_mtls(
    listener: tokio::net::TcpListener,
    table: Arc<PodTable>,
    runtime: Arc<dyn Runtime>,
    config: MtlsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut shutdown = Box::pin(shutdown);
    let MtlsConfig { control, node, ca } = config;
    let (csr, key) = pki::generate_csr(&node).map_err(std::io::Error::other)?;
    let backoff = Backoff { initial: CERTIFICATE_RETRY, max: CERTIFICATE_RETRY_MAX, reset_after: Duration::MAX };
    let mut failures = 0;
    let identity = loop {
        let failure = match control.node_certificate(&node, &csr).await {
            Ok(cert) => match pki::Identity::from_pem(&cert, &key) {
                Ok(identity) => break identity,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let delay = backoff.delay(failures);
        failures = failures.saturating_add(1);
        tracing::warn!("logs listener: no serving certificate yet ({failure}); retrying in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(()),
        }
    };
    tracing::info!(node = %node, "logs listener: serving TLS, API server's client certificate required");
    let clients = pki::ClientAuth::Require { ca, name: pki::APISERVER_NAME.to_string() };
    let tls = pki::server_config(&identity, clients).map_err(std::io::Error::other)?;
    // mTLS is the authentication: no bearer token on this listener.
    pki::serve_tls(listener, tls, router(table, runtime, None), shutdown).await
}

fn plain(code: StatusCode, msg: String) -> Response {
    (code, format!("{msg}\n")).into_response()
}

async fn logs(
    State(s): State<LogsState>,
    Path((ns, pod)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(t) = &s.token {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| model::auth::constant_time_eq(g.as_bytes(), t.as_bytes())) {
            return plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into());
        }
    }
    let id = match s.table.container_id(&ns, &pod, q.container.as_deref(), q.previous.unwrap_or(false)) {
        Ok(id) => id,
        Err(m) => return plain(StatusCode::NOT_FOUND, m),
    };
    let opts = LogOptions { follow: q.follow.unwrap_or(false), tail: q.tail };
    match s.runtime.logs(&id, opts).await {
        Ok(stream) => {
            let body = Body::from_stream(stream.map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))));
            Response::builder()
                .header("content-type", "text/plain; charset=utf-8")
                .body(body)
                .unwrap_or_else(|e| plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Err(e) => plain(StatusCode::NOT_FOUND, e.to_string()),
    }
}
