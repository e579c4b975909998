//! Berth's ingress data plane on pingora. It reads the discovery registry and never writes it.
//!
//! [`Proxy::start`] runs a pingora server on its own OS thread with HTTP/1.1 + h2c listeners, TLS listeners
//! (HTTP/1.1 and HTTP/2 by ALPN, certificates by SNI) and plain TCP listeners. A background task follows the
//! registry by watch events and publishes one immutable [`table::Table`] (routes and endpoint pools) through an
//! `ArcSwap`; the request path only loads it. Balancing lives in [`balance`] (pure), routing in [`table`],
//! pingora phases and the accounting both data paths share in [`http`], the HTTP/1.1 fast path in `h1`, the
//! request forwarding rules both HTTP/1 paths apply in `forward`, counters in [`metrics`], static files in
//! [`static_config`].
//!
//! Not here: the admin HTTP server (the caller serves [`Proxy::metrics_text`]), writing the registry.

pub mod balance;
pub mod config;
mod conn;
mod forward;
mod h1;
pub mod health;
pub mod http;
pub mod l4;
pub mod metrics;
pub mod static_config;
pub mod table;
pub mod tls;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use balance::Ejection;
pub use config::{ProxyConfig, TcpListenerConfig};
use discovery::{Object, Registry, Selector, WatchEvent};
use futures::FutureExt;
pub use metrics::ServiceStats;
use metrics::{EndpointLine, MetricsRegistry};
use parking_lot::Mutex;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::{Table, TableBuilder};
use tls::CertStore;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS listener {addr}: {message}")]
    Tls { addr: SocketAddr, message: String },
    #[error("proxy did not start listening on {addr} within {timeout:?}")]
    StartTimeout { addr: SocketAddr, timeout: Duration },
    #[error("proxy server thread exited during start")]
    Exited,
    #[error("cannot spawn the proxy thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// State shared by the pingora apps, background tasks and the handle.
pub(crate) struct Shared {
    pub(crate) table: ArcSwap<Table>,
    pub(crate) config: ProxyConfig,
    pub(crate) metrics: Arc<MetricsRegistry>,
    pub(crate) ejection: Ejection,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) certs: Arc<CertStore>,
    applied: tokio::sync::watch::Sender<u64>,
}

/// Keeps the table in step with the registry.
struct Follower {
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    builder: Mutex<TableBuilder>,
    from: u64,
}

#[async_trait]
impl BackgroundService for Follower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watch = self.registry.watch(Selector::everything(), self.from);
        loop {
            let first = tokio::select! {
                e = watch.next() => e,
                _ = shutdown.changed() => return,
            };
            let mut events = vec![first];
            while let Some(e) = watch.next().now_or_never() {
                events.push(e);
            }
            let snap = self.registry.snapshot();
            let prev = self.shared.table.load_full();
            let table = self.builder.lock().apply(&snap, &prev, &events);
            let tls_changed = events.iter().any(|e| match e {
                WatchEvent::Relist { .. } => true,
                WatchEvent::Put { object, .. } => {
                    matches!(object, Object::Route(_) | Object::Certificate(_))
                }
                WatchEvent::Delete { key, .. } => {
                    matches!(key.kind, discovery::ObjectKind::Route | discovery::ObjectKind::Certificate)
                }
            });
            if tls_changed {
                self.shared.certs.rebuild(&snap);
            }
            self.shared.table.store(Arc::new(table));
            self.shared.applied.send_replace(snap.revision());
        }
    }
}

struct L4Task {
    listener: Mutex<Option<std::net::TcpListener>>,
    cfg: TcpListenerConfig,
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for L4Task {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().take() else {
            return;
        };
        l4::serve(listener, self.cfg.clone(), self.shared.clone(), shutdown).await;
    }
}

struct StopSignal(tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Addresses the proxy actually listens on (port 0 resolved).
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

/// A running proxy. Stops (gracefully, within the configured grace) on [`Proxy::stop`] or drop.
pub struct Proxy {
    shared: Arc<Shared>,
    addrs: BoundAddrs,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    applied: tokio::sync::watch::Receiver<u64>,
}

/// Pick a free port for an address with port 0 (pingora binds by address string, after start).
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
    l.local_addr().map_err(|source| ProxyError::Bind { addr, source })
}

impl Proxy {
    /// Start serving `registry` with `config`. Returns once every HTTP/HTTPS listener accepts connections.
    pub fn start(registry: Arc<Registry>, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        pingora::tls::install_default_crypto_provider();
        let metrics = Arc::new(MetricsRegistry::default());
        let ejection = Ejection {
            consecutive_failures: config.eject_after_failures.max(1),
            base: Duration::from_millis(config.eject_base_ms),
        };
        let mut builder = TableBuilder::new(metrics.clone(), ejection);
        let snap = registry.snapshot();
        let table = builder.full(&snap, None);
        let certs = Arc::new(CertStore::default());
        certs.rebuild(&snap);
        let (applied_tx, applied_rx) = tokio::sync::watch::channel(snap.revision());
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            config: config.clone(),
            metrics,
            ejection,
            in_flight: AtomicUsize::new(0),
            certs: certs.clone(),
            applied: applied_tx,
        });

        let mut addrs = BoundAddrs::default();
        for a in &config.http_listen {
            addrs.http.push(resolve_port(*a)?);
        }
        for a in &config.https_listen {
            addrs.https.push(resolve_port(*a)?);
        }
        let mut tcp_listeners = Vec::new();
        for t in &config.tcp_listeners {
            let l =
                std::net::TcpListener::bind(t.listen).map_err(|source| ProxyError::Bind { addr: t.listen, source })?;
            l.set_nonblocking(true).map_err(|source| ProxyError::Bind { addr: t.listen, source })?;
            addrs.tcp.push(l.local_addr().map_err(|source| ProxyError::Bind { addr: t.listen, source })?);
            tcp_listeners.push((l, t.clone()));
        }

        let conf = ServerConf {
            threads: config.threads.max(1),
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(config.shutdown_grace_ms.div_ceil(1000).max(1)),
            upstream_keepalive_pool_size: 1024,
            work_stealing: config.work_stealing,
            // Pingora counts tries, the first included.
            max_retries: config.max_retries as usize + 1,
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        let server_conf = server.configuration.clone();

        // The HTTP apps run behind `conn::Guarded`: connection limit, header-read deadline, and the HTTP/1 fast
        // path with its upstream keep-alive pool (shared by the plain and TLS listeners).
        let upstreams = Arc::new(h1::Upstreams::default());
        let guarded = |name: &str, tls: bool| {
            let mut app = pingora::proxy::http_proxy(&server_conf, http::HttpApp { shared: shared.clone(), tls });
            if !tls {
                let mut opts = pingora::apps::HttpServerOptions::default();
                opts.h2c = config.h2c;
                app.server_options = Some(opts);
            }
            let h1 = h1::H1 { shared: shared.clone(), tls, upstreams: upstreams.clone() };
            let guarded = conn::Guarded { inner: Arc::new(app), shared: shared.clone(), h1 };
            pingora::services::listening::Service::new(name.to_string(), guarded)
        };
        if !addrs.http.is_empty() {
            let mut svc = guarded("berth http", false);
            for a in &addrs.http {
                svc.add_tcp(&a.to_string());
            }
            server.add_service(svc);
        }
        if !addrs.https.is_empty() {
            let mut svc = guarded("berth https", true);
            for a in &addrs.https {
                // The resolver takes precedence over the (empty) file paths, so build() reads no files.
                let mut tls = pingora::listeners::tls::TlsSettings::intermediate("", "")
                    .map_err(|e| ProxyError::Tls { addr: *a, message: e.to_string() })?;
                tls.set_cert_resolver(certs.clone());
                tls.enable_h2();
                svc.add_tls_with_settings(&a.to_string(), None, tls);
            }
            server.add_service(svc);
        }
        let follower = Follower {
            registry: registry.clone(),
            shared: shared.clone(),
            builder: Mutex::new(builder),
            from: snap.revision(),
        };
        server.add_service(background_service("berth registry follower", follower));
        server.add_service(background_service("berth health", health::HealthChecker::new(shared.clone())));
        for (l, cfg) in tcp_listeners {
            let task = L4Task { listener: Mutex::new(Some(l)), cfg, shared: shared.clone() };
            server.add_service(background_service("berth tcp", task));
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("berth-proxy".into())
            .spawn(move || {
                server.bootstrap();
                server.run(RunArgs { shutdown_signal: Box::new(StopSignal(stop_rx)) });
            })
            .map_err(ProxyError::Spawn)?;
        let mut proxy = Proxy { shared, addrs, stop: stop_tx, thread: Some(thread), applied: applied_rx };

        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        for addr in proxy.addrs.http.iter().chain(proxy.addrs.https.iter()).copied().collect::<Vec<_>>() {
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    // A connection to oneself: with nobody listening yet, the kernel can pick the probed port as
                    // the probe's own source port (both are in the ephemeral range). That socket would hold the
                    // port pingora is about to bind, and say "listening" falsely; dropping it frees the port.
                    Ok(probe) if probe.local_addr().ok() == Some(addr) => {}
                    Ok(_) => break,
                    Err(_) => {}
                }
                if proxy.thread.as_ref().is_some_and(|t| t.is_finished()) {
                    proxy.thread = None;
                    return Err(ProxyError::Exited);
                }
                if Instant::now() > deadline {
                    return Err(ProxyError::StartTimeout { addr, timeout });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(proxy)
    }

    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// The first plain HTTP listener.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.http.first().copied()
    }

    /// The registry revision the current table reflects.
    pub fn applied_revision(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Wait until the table reflects at least `revision` (false on timeout).
    pub async fn wait_applied(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// Request figures of one service, for the autoscaler.
    pub fn service_stats(&self, namespace: &str, service: &str) -> Option<ServiceStats> {
        self.shared.metrics.services.get(namespace, service).map(|m| m.stats())
    }

    /// The latency histogram of one service now, to compute an interval's p99 with
    /// [`metrics::LatencySnapshot::quantile_since`].
    pub fn service_latency(&self, namespace: &str, service: &str) -> Option<metrics::LatencySnapshot> {
        self.shared.metrics.services.get(namespace, service).map(|m| m.latency.snapshot())
    }

    /// Request figures of every service seen so far.
    pub fn all_service_stats(&self) -> Vec<((String, String), ServiceStats)> {
        self.shared.metrics.services.snapshot().into_iter().map(|(k, m)| (k, m.stats())).collect()
    }

    /// Prometheus text exposition of the proxy's metrics.
    pub fn metrics_text(&self) -> String {
        let table = self.shared.table.load_full();
        let now = balance::now_ns();
        let mut lines = Vec::new();
        for p in &table.pools {
            for e in p.pool.entries() {
                lines.push(EndpointLine {
                    namespace: &p.key.namespace,
                    service: &p.key.service,
                    endpoint: &e.id,
                    in_flight: e.state.in_flight(),
                    by_class: std::array::from_fn(|i| e.state.responses[i].load(Relaxed)),
                    ejected: e.state.is_ejected(now),
                });
            }
        }
        self.shared.metrics.render(&lines)
    }

    /// Names of the endpoints currently ejected (passive health), as `namespace/name:port`.
    pub fn ejected_endpoints(&self) -> Vec<String> {
        let table = self.shared.table.load_full();
        let now = balance::now_ns();
        table
            .pools
            .iter()
            .flat_map(|p| p.pool.entries().iter())
            .filter(|e| e.state.is_ejected(now))
            .map(|e| e.id.to_string())
            .collect()
    }

    /// Stop accepting, let in-flight requests finish (bounded by the grace period), join the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}
