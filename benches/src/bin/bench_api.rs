//! The API over HTTPS against the same API over plain HTTP, in one run (`make bench-api`).
//!
//! One process: the API server (the router `berth server` serves, on the embedded redb store, with bearer
//! authentication) runs on a runtime of one worker thread, the load on another, so each has one of the
//! machine's two cores. Per transport: `GET` of one pod and `LIST` of 1,000 pods over 8 keep-alive
//! connections, and new connections per second (one request per connection: what a handshake costs). Each
//! figure is the median of three rounds, the transports alternating within a round so drift hits both alike.
//! Last line: `RESULT api get_rps=N list_rps=N tls_vs_plain=R` (the HTTPS figures; R = HTTPS/HTTP for GET).

use control_plane::api::{self, ApiState};
use control_plane::store::{Key, RedbStore, Store};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PODS: usize = 1_000;
const CONNECTIONS: usize = 8;
const ROUNDS: usize = 3;
const GET_SECS: u64 = 4;
const LIST_SECS: u64 = 4;
const CONNECT_SECS: u64 = 3;
const TOKEN: &str = "bench-token-0123456789abcdef0123456789abcdef0123456789abcdef01234567";

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Plain,
    Tls,
}

struct Server {
    base: String,
    _runtime: std::thread::JoinHandle<()>,
}

fn main() -> BenchResult<()> {
    pki::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let ca = pki::ClusterCa::generate("bench-ca")?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("store.redb"))?);
    let seed = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    seed.block_on(seed_pods(store.as_ref()))?;

    let plain = start_server(store.clone(), None)?;
    let issued = ca.issue_server(&["localhost".into()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
    let tls_config =
        pki::server_config(&pki::Identity::from_pem(&issued.cert_pem, &issued.key_pem)?, pki::ClientAuth::None)?;
    let tls = start_server(store.clone(), Some(tls_config))?;

    let load = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let keep_alive = |t: Transport| client(&ca, t, true);
    let fresh = |t: Transport| client(&ca, t, false);
    let base = |t: Transport| if t == Transport::Tls { tls.base.clone() } else { plain.base.clone() };

    let get_path = "/api/v1/namespaces/default/pods/pod-0";
    let list_path = "/api/v1/namespaces/default/pods";
    let mut results: Vec<(&str, [f64; 2])> = Vec::new();
    for (label, path, secs, reuse) in [
        ("get", get_path, GET_SECS, true),
        ("list", list_path, LIST_SECS, true),
        ("new connections", get_path, CONNECT_SECS, false),
    ] {
        let mut rounds: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (i, t) in [Transport::Plain, Transport::Tls].into_iter().enumerate() {
                let http = if reuse { keep_alive(t)? } else { fresh(t)? };
                let url = format!("{}{path}", base(t));
                rounds[i].push(load.block_on(rate(http, url, Duration::from_secs(secs)))?);
            }
        }
        results.push((label, [median(&mut rounds[0]), median(&mut rounds[1])]));
    }

    println!("{:<16} {:>12} {:>12} {:>10}", "requests/s", "HTTP", "HTTPS", "HTTPS/HTTP");
    for (label, [p, t]) in &results {
        println!("{label:<16} {p:>12.0} {t:>12.0} {:>10.2}", t / p);
    }
    let handshake_ms = {
        let [p, t] = results[2].1;
        // Wall time per connection at CONNECTIONS in flight, TLS minus plain: the handshake's added latency.
        (CONNECTIONS as f64 * 1000.0 / t) - (CONNECTIONS as f64 * 1000.0 / p)
    };
    println!("TLS handshake adds {handshake_ms:.2} ms per new connection (ECDSA P-256, TLS 1.3)");
    let [get_plain, get_tls] = results[0].1;
    let [list_plain, list_tls] = results[1].1;
    println!(
        "keep-alive cost of TLS: GET {:.1}%, LIST {:.1}% (target: at most 10%)",
        (1.0 - get_tls / get_plain) * 100.0,
        (1.0 - list_tls / list_plain) * 100.0
    );
    println!("RESULT api get_rps={get_tls:.0} list_rps={list_tls:.0} tls_vs_plain={:.2}", get_tls / get_plain);
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn seed_pods(store: &dyn Store) -> BenchResult<()> {
    for i in 0..PODS {
        let name = format!("pod-{i}");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{i}"), "labels": {"app": "web"}},
            "spec": {"nodeName": format!("node-{}", i % 10), "containers": [{"name": "web", "image": "berth/echo",
                     "ports": [{"name": "http", "containerPort": 8080}],
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        store.create(&Key::new("pods", "default", name), serde_json::to_vec(&pod)?).await?;
    }
    Ok(())
}

/// The API on its own one-thread runtime, over TLS when `tls` is given.
fn start_server(store: Arc<dyn Store>, tls: Option<Arc<rustls::ServerConfig>>) -> BenchResult<Server> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let base = match tls {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    let runtime = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let state = ApiState::new(store, Some(TOKEN.to_string()), None);
            let never = std::future::pending::<()>();
            let _ = match tls {
                Some(config) => pki::serve_tls(listener, config, api::router(state), never).await,
                None => api::serve(listener, state, never).await,
            };
        });
    });
    Ok(Server { base, _runtime: runtime })
}

fn client(ca: &pki::ClusterCa, transport: Transport, keep_alive: bool) -> BenchResult<reqwest::Client> {
    let mut builder = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(10));
    if !keep_alive {
        builder = builder.pool_max_idle_per_host(0);
    }
    if transport == Transport::Tls {
        builder = builder.tls_backend_preconfigured(pki::client_config(ca.cert(), None)?);
    }
    Ok(builder.build()?)
}

/// Successful requests per second over `CONNECTIONS` concurrent request loops for `duration`.
async fn rate(http: reqwest::Client, url: String, duration: Duration) -> BenchResult<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut loops = Vec::new();
    for _ in 0..CONNECTIONS {
        let (http, url, done) = (http.clone(), url.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let response = http.get(&url).bearer_auth(TOKEN).send().await?;
                let status = response.status();
                let _ = response.bytes().await?;
                if !status.is_success() {
                    return Err(format!("GET {url}: HTTP {status}").into());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            BenchResult::Ok(())
        }));
    }
    for l in loops {
        l.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
