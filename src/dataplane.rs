//! `berth proxy` and `berth dns`: the data plane alone, apart from the control plane. Each keeps a local
//! registry, either mirrored from a server (`--server`, see `client::mirror`) or, for the proxy,
//! filled from a static file (`-c FILE`), and serves `/metrics` and `/healthz` on `--admin-listen`.

use crate::datadir;
use anyhow::{anyhow, bail, Context, Result};
use client::mirror::Mirror;
use discovery::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a standalone data plane gets its registry from.
#[derive(clap::Args, Debug)]
pub struct MirrorArgs {
    /// API server to mirror the registry from (default: the address recorded in the data dir). Repeat it or
    /// give a comma-separated list for several replicas: the mirror fails over between them.
    #[arg(long, env = "BERTH_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Bearer token file (default: DATA_DIR/token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Data dir holding the token, the CA and the recorded API address; a joined proxy keeps its
    /// credential in DATA_DIR/dataplane.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Join token of role `proxy` (from `berth token create --role proxy`), exchanged once for this
    /// machine's own credential.
    #[arg(long, env = "BERTH_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// The cluster CA certificate to verify an https:// server with when not joining (default: DATA_DIR/ca.crt).
    #[arg(long, env = "BERTH_CA")]
    pub certificate_authority: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Serve routes and services from this YAML/JSON file instead of a server (reloaded when it changes).
    #[arg(short = 'c', long = "config", conflicts_with_all = ["server", "token_file", "data_dir", "join", "certificate_authority"])]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// HTTP listen address (repeatable; default 127.0.0.1:8080, or the file's `proxy.httpListen` with -c).
    #[arg(long)]
    pub http_listen: Vec<SocketAddr>,
    /// TLS listen address (repeatable; certificates come from the registry, chosen by SNI).
    #[arg(long)]
    pub https_listen: Vec<SocketAddr>,
    /// Admin listen address (`/metrics`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Worker threads of the proxy (default 1, or the file's `proxy.threads` with -c).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// DNS listen address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8053")]
    pub dns_listen: SocketAddr,
    /// DNS zone served.
    #[arg(long, default_value = "cluster.local")]
    pub dns_zone: String,
    /// Resolver to forward names outside the zone to (default: answer them REFUSED).
    #[arg(long)]
    pub dns_upstream: Option<SocketAddr>,
    /// TTL of the answers, e.g. `5s`, `0s` or `30` (seconds).
    #[arg(long, default_value = "5s", value_parser = parse_ttl)]
    pub dns_ttl: Duration,
    /// Threads reading the UDP socket.
    #[arg(long, default_value_t = 1)]
    pub udp_workers: usize,
    /// Admin listen address (`/metrics`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub admin_listen: SocketAddr,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("expected seconds or a duration like 5s: {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err("DNS TTLs are whole seconds".into());
    }
    Ok(d)
}

/// Log lines (mirror connection changes, reloads) go to stderr; `RUST_LOG` overrides the `info` default.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Start the mirror and wait (bounded) for its first snapshot; a server that never answers is an error at
/// start, while later outages only make the mirror stale.
async fn start_mirror(args: &MirrorArgs, role: &str) -> Result<Mirror> {
    let dir = args.data_dir.clone().unwrap_or_else(datadir::default_dir);
    let servers = crate::credentials::servers_or_recorded(&args.server, &dir)
        .ok_or_else(|| anyhow!("no --server given and no API address recorded in {}", dir.display()))?;
    let credentials = crate::credentials::resolve_any(
        &servers,
        &dir,
        &dir.join("dataplane"),
        args.join.as_deref(),
        None,
        args.token_file.as_deref(),
        args.certificate_authority.as_deref(),
    )
    .await?;
    let mirror = Mirror::start(credentials.mirror(&servers), Arc::new(Registry::new())).context("--server")?;
    let server = servers.join(",");
    println!("berth {role}: mirroring the registry of {server} ({})", credentials.source);
    let timeout = Duration::from_secs(30);
    if !mirror.wait_synced(timeout).await {
        let why = mirror.status().last_error.unwrap_or_else(|| "no answer".into());
        bail!("no registry snapshot from {server} within {timeout:?} (--server): {why}");
    }
    Ok(mirror)
}

/// What `/metrics` renders, besides the serving component's own figures.
type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: MetricsFn,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn bind_admin(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--admin-listen)"))
}

pub async fn proxy(args: ProxyArgs) -> Result<()> {
    init_logging();
    let http = args.http_listen.clone();
    let https = args.https_listen.clone();
    let threads = args.threads;
    let adjust = move |c: &mut proxy::ProxyConfig| {
        if !http.is_empty() {
            c.http_listen = http;
        }
        if !https.is_empty() {
            c.https_listen = https;
        }
        if let Some(t) = threads {
            c.threads = t;
        }
        // This process runs one proxy: it may use single-threaded runtimes (see the field).
        c.work_stealing = false;
    };
    let admin = bind_admin(args.admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    // The proxy runs on its own threads; whichever source feeds it is kept alive until shutdown.
    let (proxy, metrics, source): (Arc<proxy::Proxy>, MetricsFn, Box<dyn std::any::Any + Send>) = match &args.config {
        Some(path) => {
            let (proxy, reloader) = proxy::static_config::start_with(path, adjust)
                .with_context(|| format!("cannot start the proxy from {} (-c)", path.display()))?;
            let (proxy, reloader) = (Arc::new(proxy), Arc::new(reloader));
            println!("berth proxy: serving the static configuration {} (reloaded on change)", path.display());
            let (p, r) = (proxy.clone(), reloader.clone());
            let metrics: MetricsFn = Arc::new(move || p.metrics_text() + &r.metrics_text());
            (proxy, metrics, Box::new(reloader))
        }
        None => {
            let mirror = Arc::new(start_mirror(&args.mirror, "proxy").await?);
            let mut settings = proxy::ProxyConfig::default();
            adjust(&mut settings);
            let listen = settings.http_listen.clone();
            let proxy = proxy::Proxy::start(mirror.registry().clone(), settings)
                .with_context(|| format!("cannot start the proxy on {listen:?} (--http-listen/--https-listen)"))?;
            let proxy = Arc::new(proxy);
            let (p, m) = (proxy.clone(), mirror.clone());
            let metrics: MetricsFn = Arc::new(move || p.metrics_text() + &m.metrics_text());
            (proxy, metrics, Box::new(mirror))
        }
    };
    let stop = crate::roles::stop_on_signal();
    let admin_task = tokio::spawn(serve_admin(admin, metrics, stop.wait()));
    let addrs = proxy.addrs();
    let list =
        |v: &[SocketAddr], scheme: &str| v.iter().map(|a| format!("{scheme}://{a}")).collect::<Vec<_>>().join(", ");
    println!(
        "berth proxy: proxy on {}{}, admin on http://{admin_addr}",
        list(&addrs.http, "http"),
        if addrs.https.is_empty() { String::new() } else { format!(", TLS on {}", list(&addrs.https, "https")) }
    );
    stop.wait().await;
    println!("berth proxy: stopping");
    let _ = admin_task.await;
    drop(source);
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.stop();
    }
    println!("berth proxy: stopped");
    Ok(())
}

pub async fn dns(args: DnsArgs) -> Result<()> {
    init_logging();
    anyhow::ensure!(args.udp_workers >= 1, "--udp-workers: expected at least 1, got 0");
    let admin = bind_admin(args.admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    let mirror = Arc::new(start_mirror(&args.mirror, "dns").await?);
    let config = discovery::dns::DnsConfig {
        zone: args.dns_zone.clone(),
        ttl: args.dns_ttl,
        upstream: args.dns_upstream,
        udp_workers: args.udp_workers,
        ..Default::default()
    };
    let dns = discovery::dns::DnsServer::new(config, mirror.registry().clone()).context("--dns-zone/--dns-ttl")?;
    let (udp, tcp) = discovery::dns::bind(args.dns_listen, 1)
        .await
        .with_context(|| format!("cannot listen on {} (--dns-listen)", args.dns_listen))?;
    let dns_addr = udp[0].local_addr()?;
    let stop = crate::roles::stop_on_signal();
    let dns_task = {
        let (dns, stop) = (dns.clone(), stop.wait());
        tokio::spawn(async move { dns.serve(udp, tcp, stop).await })
    };
    let (d, m) = (dns.clone(), mirror.clone());
    let metrics: MetricsFn = Arc::new(move || d.metrics() + &m.metrics_text());
    let admin_task = tokio::spawn(serve_admin(admin, metrics, stop.wait()));
    println!("berth dns: DNS on {dns_addr} (zone {}), admin on http://{admin_addr}", args.dns_zone);
    stop.wait().await;
    println!("berth dns: stopping");
    let served = dns_task.await;
    let _ = admin_task.await;
    if let Ok(Err(e)) = served {
        return Err(anyhow!(e).context("DNS server failed"));
    }
    println!("berth dns: stopped");
    Ok(())
}
