//! Server-side roles of the binary: `berth server` and `berth up` (the standalone proxy and DNS are in
//! `dataplane`, the agent in `agent_cmd`).

use crate::datadir;
use agent::{Agent, AgentConfig, HttpControlPlane};
use anyhow::{Context, Result};
use client::Client;
use control_plane::api::{self, ApiState};
use control_plane::controllers::{Controllers, ControllersConfig, LoadSample, LoadSource};
use control_plane::ha::{self, LeaderSet, Replica, Timing};
use control_plane::scheduler::SchedulingPolicy;
use control_plane::store;
use discovery::Registry;
use model::clock::SystemClock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Where the token, the recorded API address and the embedded store live
    /// (default: $XDG_DATA_HOME/berth, else ~/.local/share/berth).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API listen address (port 0 picks a free port; the chosen address is printed and recorded).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,
    /// Bearer token file (created with mode 0600 when missing). Default: DATA_DIR/token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Store: `redb:PATH` (default DATA_DIR/store.redb), `memory:`, or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long)]
    pub store: Option<String>,
    /// Serve the API and store only: run no scheduler and no controllers in this process.
    #[arg(long)]
    pub no_controllers: bool,
    /// Another name or address the API's certificate is valid for (repeatable); localhost, 127.0.0.1, ::1,
    /// the listen address and the host name are always in it.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Serve the API over plain HTTP instead of HTTPS: only on a loopback --api-listen.
    #[arg(long)]
    pub plain_http: bool,
    /// This replica's name among the control-plane replicas of one etcd store (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The URL other replicas and clients reach this replica's API at, as `berth get controlplane` shows
    /// it (default: the URL it serves on).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// With an etcd store: how long the leader's lease lives without a keep-alive (another replica takes
    /// over after this when the leader dies).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_duration: std::time::Duration,
    /// With an etcd store: the leader stops its scheduler and controllers when no keep-alive was
    /// acknowledged for this long (shorter than --lease-duration).
    #[arg(long, default_value = "7s", value_parser = humantime::parse_duration)]
    pub renew_deadline: std::time::Duration,
    /// With an etcd store: how often the lease is kept alive and a lost campaign retried.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_period: std::time::Duration,
    /// The range Services' virtual addresses (`spec.clusterIP`) are allocated from: inside 127.0.0.0/8
    /// (loopback), not containing 127.0.0.1, at most a /28. Every replica of one store must use the same.
    #[arg(long, default_value = control_plane::api::cluster_ip::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: control_plane::api::ServiceCidr,
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Manifests to apply once the control plane is up (file or directory; repeatable).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Local node agents to run (process runtime), named node-1..N in zones zone-a, zone-b, ...
    #[arg(long, default_value_t = 1)]
    pub agents: usize,
    /// Proxy HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Proxy: downstream connections served at once; more get a quick 503 (0: no limit).
    #[arg(long, default_value_t = proxy::ProxyConfig::default().max_connections)]
    pub max_connections: usize,
    /// Proxy: a request header must be complete within this many milliseconds of the accept, or the
    /// connection is closed (slowloris; 0: off).
    #[arg(long, default_value_t = proxy::ProxyConfig::default().header_read_timeout_ms)]
    pub header_read_timeout_ms: u64,
    /// DNS listen address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8053")]
    pub dns_listen: SocketAddr,
    /// DNS zone served.
    #[arg(long, default_value = "cluster.local")]
    pub dns_zone: String,
    /// Admin listen address (`/metrics`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
}

/// A running control plane: the API over the store.
struct ControlPlane {
    url: String,
    /// The cluster CA clients verify the API with; `None` with `--plain-http`.
    ca: Option<pki::CaCert>,
    token: String,
    store_url: String,
    token_file: PathBuf,
    dir: PathBuf,
    registry: Arc<Registry>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The election and the leader set (`None` with --no-controllers); it ends after resigning on stop.
    electing: Option<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// An admin client of this control plane.
    fn client(&self) -> Result<Client> {
        let credentials = crate::credentials::Credentials {
            ca: self.ca.clone(),
            token: Some(self.token.clone()),
            source: String::new(),
        };
        credentials.client(&self.url)
    }
}

/// A shutdown signal shared by every part of one process.
#[derive(Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// Fires the returned [`Stop`] on Ctrl-C or SIGTERM.
pub(crate) fn stop_on_signal() -> Stop {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    Stop(rx)
}

/// The autoscaler's load source in one process: the proxy's per-service figures, read directly.
struct ProxyLoad {
    proxy: Arc<proxy::Proxy>,
    /// Per service: the latency histogram at the previous sample, so each sample's p99 covers only the
    /// requests completed since, and the arrivals counted then.
    last: Mutex<HashMap<(String, String), (proxy::metrics::LatencySnapshot, u64)>>,
}

impl LoadSource for ProxyLoad {
    fn sample(&self, namespace: &str, service: &str) -> Option<LoadSample> {
        let stats = self.proxy.service_stats(namespace, service)?;
        let latency = self.proxy.service_latency(namespace, service)?;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), service.to_string());
        let previous = last.get(&key);
        let p99 = latency.quantile_since(previous.map(|(l, _)| l), 0.99);
        // Arrivals (completed + in flight), not completions: a backlog draining after a scale-up must not look
        // like a burst of load. The two figures are read apart, so keep the count monotonic.
        let arrivals = (stats.requests_total + stats.in_flight.max(0) as u64).max(previous.map_or(0, |(_, a)| *a));
        last.insert(key, (latency, arrivals));
        Some(LoadSample {
            at: std::time::SystemTime::now(),
            requests_total: arrivals,
            in_flight: stats.in_flight.max(0) as u64,
            waiting: stats.waiting,
            latency_p99_ms: p99,
        })
    }
}

async fn start_control_plane(
    args: &ServerArgs,
    stop: &Stop,
    registry: Arc<Registry>,
    load: Option<Arc<dyn LoadSource>>,
) -> Result<ControlPlane> {
    let dir = args.data_dir.clone().unwrap_or_else(datadir::default_dir);
    datadir::ensure(&dir)?;
    let token_file = args.token_file.clone().unwrap_or_else(|| dir.join(datadir::TOKEN_FILE));
    let token = datadir::load_or_create_token(&token_file)?;
    let store_url = args.store.clone().unwrap_or_else(|| format!("redb:{}", dir.join("store.redb").display()));
    anyhow::ensure!(
        !args.plain_http || args.api_listen.ip().is_loopback(),
        "--plain-http: only on a loopback address (bearer tokens must not cross a network in clear), \
         not {}",
        args.api_listen
    );
    let timing = Timing {
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    timing.validate()?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--api-listen)", args.api_listen))?;
    let addr = listener.local_addr()?;
    // An unspecified listen address is reached locally through loopback.
    let local = if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
    let url = format!("{}://{local}", if args.plain_http { "http" } else { "https" });
    let replica = Replica {
        name: args.name.clone().or_else(agent::hostname).unwrap_or_else(|| "berth".to_string()),
        url: args.advertise_url.clone().unwrap_or_else(|| url.clone()),
    };
    let opened =
        ha::open(&store_url, replica, timing).await.with_context(|| format!("cannot open store {store_url}"))?;
    // Secrets are sealed at rest with the key in the data dir, whatever the backend (see store/encrypt.rs);
    // every replica of one store must hold the same key, which the store's canary checks.
    let sealing = Arc::new(
        store::EncryptingStore::open_verified(opened.store, &dir).await.context("cannot start the control plane")?,
    );
    let store: Arc<dyn store::Store> = sealing.clone();
    let ca = control_plane::ca::load_or_create(store.as_ref(), &dir).await.context("cannot set up the cluster CA")?;
    let state = ApiState::new(store.clone(), Some(token.clone()), Some(registry.clone()))
        .with_control_plane(opened.status.clone())
        .with_service_cidr(args.service_cidr);
    let (client_ca, serving) = if args.plain_http {
        (None, tokio::spawn(api::serve(listener, state, stop.wait())))
    } else {
        let tls = serving_tls(&ca, addr, &args.tls_san)?;
        let apiserver = ca.issue_client(pki::APISERVER_NAME)?;
        let state = state
            .with_authority(Arc::new(control_plane::ca::Authority::new(pki::ClusterCa::from_pem(
                ca.cert().pem(),
                ca.key_pem(),
            )?)))
            .with_agent_tls(ca.cert(), &pki::Identity::from_pem(&apiserver.cert_pem, &apiserver.key_pem)?)?;
        (Some(ca.cert().clone()), tokio::spawn(pki::serve_tls(listener, tls, api::router(state), stop.wait())))
    };
    datadir::record_address(&dir, &url)?;
    let electing = if args.no_controllers {
        None
    } else {
        let config = ControllersConfig::default();
        // Every replica feeds its own registry (the Endpoints controller writes nothing to the store); only
        // the leader runs the rest, over the store its election hands it (fenced on etcd), sealed alike.
        Controllers::start_endpoints(store.clone(), registry.clone(), Arc::new(SystemClock), &config, stop.wait());
        let leader_set = LeaderSet {
            clock: Arc::new(SystemClock),
            controllers: config,
            load,
            policy: SchedulingPolicy::default(),
            wrap: Arc::new(move |backend| Arc::new(sealing.with_inner(backend)) as Arc<dyn store::Store>),
        };
        Some(tokio::spawn(opened.election.run(leader_set.into_work(), stop.wait())))
    };
    Ok(ControlPlane { url, ca: client_ca, token, store_url, token_file, dir, registry, serving, electing })
}

/// The API's serving configuration: a certificate from the cluster CA for every name a client may use,
/// sent with the CA (a joining client pins the CA by its hash before it trusts it).
fn serving_tls(ca: &pki::ClusterCa, addr: SocketAddr, extra: &[String]) -> Result<Arc<rustls::ServerConfig>> {
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = agent::hostname() {
        names.push(host);
    }
    names.extend(extra.iter().cloned());
    let mut ips: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    if !addr.ip().is_unspecified() {
        ips.push(addr.ip());
    }
    let issued = ca.issue_server(&names, &ips).context("--tls-san")?;
    let chain = format!("{}{}", issued.cert_pem, ca.cert().pem());
    Ok(pki::server_config(&pki::Identity::from_pem(&chain, &issued.key_pem)?, pki::ClientAuth::None)?)
}

pub async fn server(args: ServerArgs) -> Result<()> {
    let stop = stop_on_signal();
    let cp = start_control_plane(&args, &stop, Arc::new(Registry::new()), None).await?;
    println!("berth server: API on {} (token in {}), store {}", cp.url, cp.token_file.display(), cp.store_url);
    cp.serving.await.context("API server task failed")?.context("API server failed")?;
    if let Some(electing) = cp.electing {
        // Its loops stopped and it resigned, so another replica leads at once.
        let _ = electing.await;
    }
    println!("berth server: stopped");
    Ok(())
}

/// Everything in one process on the embedded store: control plane, controllers, local agents, proxy, DNS
/// and the admin endpoint; then the manifests applied.
pub async fn up(args: UpArgs) -> Result<()> {
    anyhow::ensure!((1..=26).contains(&args.agents), "--agents: expected 1 to 26, got {}", args.agents);
    let stop = stop_on_signal();
    // The proxy starts first so the autoscaler reads its figures from the first evaluation.
    let registry = Arc::new(Registry::new());
    let proxy_config = proxy::ProxyConfig {
        http_listen: vec![args.http_listen],
        max_connections: args.max_connections,
        header_read_timeout_ms: args.header_read_timeout_ms,
        // Scale from zero: a request for a service without endpoints waits for one (see the README).
        hold_max_requests: 100,
        hold_timeout_ms: 30_000,
        // This process runs one proxy: it may use single-threaded runtimes (see the field).
        work_stealing: false,
        ..Default::default()
    };
    let proxy = proxy::Proxy::start(registry.clone(), proxy_config)
        .with_context(|| format!("cannot start the proxy on {} (--http-listen)", args.http_listen))?;
    let http_addr = proxy.http_addr().unwrap_or(args.http_listen);
    let proxy = Arc::new(proxy);
    let load = Arc::new(ProxyLoad { proxy: proxy.clone(), last: Mutex::new(HashMap::new()) });
    let cp = start_control_plane(&args.server, &stop, registry, Some(load)).await?;

    // The local agents join as any node does: a node join token, exchanged for each node's own credential.
    let admin = cp.client()?;
    let join = match &cp.ca {
        Some(_) => Some(
            admin
                .create_token(&serde_json::json!({"role": "node", "usage": "join", "ttlSeconds": 600,
                                                   "description": "berth up: local agents"}))
                .await
                .context("cannot create a join token for the local agents")?,
        ),
        None => None,
    };
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let name = format!("node-{}", i + 1);
        let zone = format!("zone-{}", (b'a' + i as u8) as char);
        let mut config = AgentConfig::new(name.clone(), cp.dir.join("agents").join(&name));
        config.labels.insert("topology.kubernetes.io/zone".into(), zone);
        config.labels.insert("kubernetes.io/hostname".into(), name.clone());
        config.claim_unbound = false; // the scheduler binds pods
        config.stop_pods_on_shutdown = true;
        let credentials = match &join {
            Some(join) => {
                let state = config.data_dir.clone();
                crate::credentials::resolve_any(
                    std::slice::from_ref(&cp.url),
                    &cp.dir,
                    &state,
                    Some(join),
                    Some(&name),
                    None,
                    None,
                )
                .await?
            }
            None => crate::credentials::Credentials {
                ca: None,
                token: Some(cp.token.clone()),
                source: "bootstrap token".into(),
            },
        };
        config.logs_token = if credentials.ca.is_none() { credentials.token.clone() } else { None };
        config.ca = credentials.ca.clone();
        let control = Arc::new(HttpControlPlane::new(credentials.client(&cp.url)?));
        let agent_stop = stop.wait();
        agents.push(tokio::spawn(async move {
            if let Err(e) = Agent::run(config, control, agent_stop).await {
                eprintln!("berth up: agent {name} failed: {e}");
            }
        }));
    }

    let dns_config = discovery::dns::DnsConfig { zone: args.dns_zone.clone(), ..Default::default() };
    let dns = discovery::dns::DnsServer::new(dns_config, cp.registry.clone()).context("--dns-zone")?;
    let (udp, tcp) = discovery::dns::bind(args.dns_listen, 1)
        .await
        .with_context(|| format!("cannot listen on {} (--dns-listen)", args.dns_listen))?;
    let dns_addr = udp[0].local_addr()?;
    let dns_task = {
        let dns = dns.clone();
        let stop = stop.wait();
        tokio::spawn(async move { dns.serve(udp, tcp, stop).await })
    };

    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    let admin_task = tokio::spawn(serve_admin(admin, proxy.clone(), dns.clone(), stop.wait()));

    println!("berth up: API on {} (token in {}), store {}", cp.url, cp.token_file.display(), cp.store_url);
    println!(
        "berth up: proxy on http://{http_addr}, DNS on {dns_addr} (zone {}), admin on http://{admin_addr}",
        args.dns_zone
    );
    println!("berth up: {} agent(s) running the process runtime", args.agents);
    if !args.files.is_empty() {
        let client = cp.client()?;
        for doc in crate::cli::parse_all(&args.files)? {
            let applied = client.apply(&doc.object, false).await.with_context(|| doc.display_name())?;
            println!("berth up: {} {}", doc.display_name(), applied.result);
        }
    }
    let dir_flag =
        if args.server.data_dir.is_some() { format!(" --data-dir {}", cp.dir.display()) } else { String::new() };
    println!("berth up: ready. Try:");
    println!("  curl -H 'Host: demo.localhost' http://{http_addr}/");
    println!("  dig @{} -p {} demo.default.svc.{} +short", dns_addr.ip(), dns_addr.port(), args.dns_zone);
    println!("  berth get pods -o wide{dir_flag}");

    stop.wait().await;
    println!("berth up: stopping");
    for a in agents {
        let _ = a.await;
    }
    let _ = dns_task.await;
    let _ = admin_task.await;
    let _ = cp.serving.await;
    if let Some(electing) = cp.electing {
        let _ = electing.await;
    }
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.stop();
    }
    println!("berth up: stopped");
    Ok(())
}

/// The admin endpoint: `/healthz` and `/metrics` (proxy and DNS figures, Prometheus text).
async fn serve_admin(
    listener: tokio::net::TcpListener,
    proxy: Arc<proxy::Proxy>,
    dns: discovery::dns::DnsServer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let (proxy, dns) = (proxy.clone(), dns.clone());
            async move {
                let mut text = proxy.metrics_text();
                text.push_str(&dns.metrics());
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
