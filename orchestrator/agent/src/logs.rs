//! The agent's logs endpoint: `GET /logs/NS/POD?container=&follow=&tail=&previous=` on a small listener of
//! its own (advertised as `status.daemonEndpoints.agentEndpoint.Port` of its Node). Only the API server calls
//! it (`GET /api/v1/namespaces/NS/pods/POD/log` relays here), presenting the cluster token, which the endpoint
//! requires whenever the agent has one (`berth agent` and `berth up` always do; `None` is for in-process
//! tests). The endpoint only reads what the runtime kept.

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

/// Serve the logs endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    table: Arc<PodTable>,
    runtime: Arc<dyn Runtime>,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/logs/{ns}/{pod}", get(logs))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(LogsState { table, runtime, token });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
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
