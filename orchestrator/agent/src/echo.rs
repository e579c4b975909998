//! `berth echo`: the tiny HTTP workload used by demos and tests.
//!
//! It answers `GET /` with its pod name and a request counter, serves `/healthz`, and has control endpoints
//! that make it slow (`POST /control/slow?ms=N`), fail its health check (`/control/fail-health`), recover
//! (`/control/heal`) or exit with a code (`/control/exit?code=N`). For tests of ConfigMap/Secret delivery it
//! shows one of its environment variables (`GET /env/NAME`) and one file of its container
//! (`GET /file?path=/etc/config/greeting`; under the process runtime the container path is looked up below
//! `$BERTH_ROOT`, the pod directory that stands for the container's root). It is not a general web server: it
//! holds no state beyond one process's counters and never writes anything.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The default listen address: `$HOST:$PORT`, where the agent sets `PORT` and `HOST` (the node's address,
/// `berth agent --node-ip`); `HOST` defaults to `$BERTH_POD_IP`, then 127.0.0.1 (the echo image sets 0.0.0.0,
/// since a published container port arrives on the container's interface), and `PORT` to 8081.
pub fn default_listen() -> String {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let host = var("HOST").or_else(|| var("BERTH_POD_IP")).unwrap_or_else(|| "127.0.0.1".into());
    let port = var("PORT").unwrap_or_else(|| "8081".into());
    // An IPv6 address needs brackets before the port.
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The name this instance reports: `$POD_NAME`, else the host name.
pub fn identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME") {
        if !p.is_empty() {
            return p;
        }
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".to_string())
}

struct Echo {
    pod: String,
    listen: SocketAddr,
    counter: AtomicU64,
    healthy: AtomicBool,
    slow_ms: AtomicU64,
    /// `Some(code)` once `/control/exit` was called: the server drains and the process exits with it.
    exit: watch::Sender<Option<i32>>,
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

#[derive(Deserialize)]
struct ExitQuery {
    code: Option<i32>,
}

async fn root(State(s): State<Arc<Echo>>) -> impl IntoResponse {
    let n = s.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let slow = s.slow_ms.load(Ordering::Relaxed);
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    Json(serde_json::json!({
        "pod": s.pod,
        "counter": n,
        "pid": std::process::id(),
        "listen": s.listen.to_string(),
        "node": std::env::var("NODE_NAME").ok(),
        "healthy": s.healthy.load(Ordering::Relaxed),
    }))
}

async fn env_var(Path(name): Path<String>) -> impl IntoResponse {
    match std::env::var(&name) {
        Ok(v) => (StatusCode::OK, v),
        Err(_) => (StatusCode::NOT_FOUND, format!("{name} is not set\n")),
    }
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
}

/// The container path `path` on this host: below `$BERTH_ROOT` when set (process runtime), else as is.
fn container_path(path: &str) -> Option<std::path::PathBuf> {
    if !path.starts_with('/') || path.split('/').any(|seg| seg == "..") {
        return None;
    }
    Some(match std::env::var_os("BERTH_ROOT").filter(|r| !r.is_empty()) {
        Some(root) => std::path::PathBuf::from(root).join(path.trim_start_matches('/')),
        None => std::path::PathBuf::from(path),
    })
}

async fn file(Query(q): Query<FileQuery>) -> impl IntoResponse {
    let Some(p) = container_path(&q.path) else {
        return (StatusCode::BAD_REQUEST, format!("path {:?}: expected an absolute path without '..'\n", q.path))
            .into_response();
    };
    match tokio::fs::read(&p).await {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, format!("{}: not found\n", q.path)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}\n", q.path)).into_response(),
    }
}

async fn healthz(State(s): State<Arc<Echo>>) -> impl IntoResponse {
    if s.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy (told to fail)\n")
    }
}

async fn slow(State(s): State<Arc<Echo>>, Query(q): Query<SlowQuery>) -> impl IntoResponse {
    let ms = q.ms.unwrap_or(1000);
    s.slow_ms.store(ms, Ordering::Relaxed);
    format!("slow: {ms} ms per request\n")
}

async fn fail_health(State(s): State<Arc<Echo>>) -> impl IntoResponse {
    s.healthy.store(false, Ordering::Relaxed);
    "health checks now fail\n"
}

async fn heal(State(s): State<Arc<Echo>>) -> impl IntoResponse {
    s.healthy.store(true, Ordering::Relaxed);
    s.slow_ms.store(0, Ordering::Relaxed);
    "healed\n"
}

async fn exit(State(s): State<Arc<Echo>>, Query(q): Query<ExitQuery>) -> impl IntoResponse {
    let code = q.code.unwrap_or(1);
    s.exit.send_replace(Some(code));
    format!("exiting with code {code}\n")
}

/// Serve on `listener` until `shutdown` resolves (then in-flight requests finish) or `/control/exit` is called.
/// Returns the exit code asked for through `/control/exit`, if any.
pub async fn serve(
    listener: TcpListener,
    pod: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Option<i32>> {
    let listen = listener.local_addr()?;
    let (exit_tx, mut exit_rx) = watch::channel(None);
    let state = Arc::new(Echo {
        pod,
        listen,
        counter: AtomicU64::new(0),
        healthy: AtomicBool::new(true),
        slow_ms: AtomicU64::new(0),
        exit: exit_tx,
    });
    let app = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/env/{name}", get(env_var))
        .route("/file", get(file))
        .route("/control/slow", post(slow).get(slow))
        .route("/control/fail-health", post(fail_health).get(fail_health))
        .route("/control/heal", post(heal).get(heal))
        .route("/control/exit", post(exit).get(exit))
        .with_state(state.clone());
    let mut exit_wait = exit_rx.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = exit_wait.wait_for(|c| c.is_some()) => {}
            }
        })
        .await?;
    let code = *exit_rx.borrow_and_update();
    Ok(code)
}

/// The whole `berth echo` command: bind, print the address, serve until SIGTERM/SIGINT or `/control/exit`.
/// Returns the process exit code.
pub async fn run(listen: &str) -> std::io::Result<i32> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let pod = identity();
    println!("berth echo: pod {pod} listening on http://{addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!("berth echo: shutting down, finishing in-flight requests");
    };
    let code = serve(listener, pod, shutdown).await?;
    Ok(code.unwrap_or(0))
}

/// Parse `berth echo`'s arguments (`[echo] [--listen ADDR]`) for the standalone `berth-echo` binary, which
/// has no clap. Returns the listen address.
pub fn parse_args(args: &[String]) -> Result<String, String> {
    let mut listen = None;
    let mut it = args.iter().peekable();
    if it.peek().map(|a| a.as_str()) == Some("echo") {
        it.next();
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = Some(it.next().ok_or("--listen needs an address")?.clone()),
            s if s.starts_with("--listen=") => listen = Some(s["--listen=".len()..].to_string()),
            other => return Err(format!("unknown argument {other:?} (usage: echo [--listen ADDR])")),
        }
    }
    Ok(listen.unwrap_or_else(default_listen))
}

#[cfg(test)]
mod tests {
    use super::container_path;

    #[test]
    fn container_paths_stay_below_the_root() {
        assert!(container_path("relative").is_none());
        assert!(container_path("/etc/../../x").is_none());
        let p = container_path("/etc/config/a").unwrap();
        assert!(p.ends_with("etc/config/a"), "{}", p.display());
    }

    use super::*;

    #[test]
    fn parses_args() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_args(&s(&["echo", "--listen", "127.0.0.1:1"])).unwrap(), "127.0.0.1:1");
        assert_eq!(parse_args(&s(&["--listen=127.0.0.1:2"])).unwrap(), "127.0.0.1:2");
        assert!(parse_args(&s(&["--bogus"])).is_err());
        assert!(parse_args(&s(&["--listen"])).is_err());
    }
}
