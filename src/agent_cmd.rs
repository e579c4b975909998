//! `berth agent` (a node agent against an API server) and `berth logs` (a pod's logs, through the API
//! server, which relays them from the agent that runs the pod).

use crate::{cli, datadir, ClientOpts};
use agent::{self, Agent, AgentConfig, HttpControlPlane, RuntimeKind};
use anyhow::{anyhow, Context, Result};
use client::LogRequest;
use futures::StreamExt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// API server URL (default: the address recorded in the data dir). Repeat it or give a comma-separated
    /// list for several replicas: the agent fails over between them and resumes its watch on the next one.
    #[arg(long, env = "BERTH_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Bearer token file (default: DATA_DIR/token), used when the agent has no credential of its own.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Join token of role `node` (from `berth token create --role node`): exchanged once for this node's
    /// own credential, kept in DATA_DIR/agent-NAME.
    #[arg(long, env = "BERTH_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// The cluster CA certificate to verify an https:// server with when not joining (default: DATA_DIR/ca.crt).
    #[arg(long, env = "BERTH_CA")]
    pub certificate_authority: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Capacity reported for the node, e.g. `cpu=2,memory=4Gi,pods=110`.
    #[arg(long, default_value = "cpu=2,memory=4Gi,pods=110")]
    pub capacity: String,
    /// Node labels, e.g. `topology.kubernetes.io/zone=zone-a,disk=ssd`.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Container runtime: `process` (fork/exec) or `docker`.
    #[arg(long, default_value = "process")]
    pub runtime: RuntimeKind,
    /// Data dir (token, recorded API address); the agent keeps its state under DATA_DIR/agent-NAME.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run pods that have no `spec.nodeName` by binding them to this node (until a scheduler runs).
    #[arg(long)]
    pub claim_unbound: bool,
    /// This node's address, reachable from the servers and proxies of other hosts: the node's InternalIP,
    /// the pods' hostIP/podIP, and where process-runtime workloads listen (`HOST`, `BERTH_POD_IP`) and Docker
    /// publishes container ports.
    #[arg(long, env = "BERTH_NODE_IP", default_value = "127.0.0.1")]
    pub node_ip: std::net::IpAddr,
    /// Listen address of the logs endpoint (port 0 picks one; advertised in the node's status; default:
    /// NODE_IP:0).
    #[arg(long)]
    pub logs_listen: Option<String>,
    /// Stop the pods when the agent stops (default: leave them running for the next agent to adopt).
    #[arg(long)]
    pub stop_pods_on_exit: bool,
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    let dir = args.data_dir.clone().unwrap_or_else(datadir::default_dir);
    datadir::ensure(&dir)?;
    let servers = crate::credentials::servers_or_recorded(&args.server, &dir)
        .ok_or_else(|| anyhow!("no --server given and no API address recorded in {}", dir.display()))?;
    let name = match args.name.clone() {
        Some(n) => n,
        None => agent::hostname().ok_or_else(|| anyhow!("cannot read the host name: pass --name"))?,
    };
    let state = dir.join(format!("agent-{name}"));
    let credentials = crate::credentials::resolve_any(
        &servers,
        &dir,
        &state,
        args.join.as_deref(),
        Some(&name),
        args.token_file.as_deref(),
        args.certificate_authority.as_deref(),
    )
    .await?;
    let mut cfg = AgentConfig::new(name.clone(), state);
    cfg.capacity = agent::parse_kv_list(&args.capacity).map_err(|e| anyhow!("--capacity: {e}"))?;
    cfg.labels = agent::parse_kv_list(&args.labels).map_err(|e| anyhow!("--labels: {e}"))?;
    cfg.runtime = args.runtime;
    cfg.claim_unbound = args.claim_unbound;
    cfg.node_ip = args.node_ip;
    cfg.logs_listen =
        args.logs_listen.clone().unwrap_or_else(|| std::net::SocketAddr::new(args.node_ip, 0).to_string());
    // Over TLS the listener admits only the API server's certificate; plain HTTP keeps the bearer token.
    cfg.logs_token = if credentials.ca.is_none() { credentials.token.clone() } else { None };
    cfg.ca = credentials.ca.clone();
    cfg.stop_pods_on_shutdown = args.stop_pods_on_exit;
    let client = credentials.client_of(&servers)?;
    // Long-running: move off a replica as soon as it stops being ready, not only when a request fails.
    client.probe_readiness();
    let control = Arc::new(HttpControlPlane::new(client));
    println!(
        "berth agent: node {name} at {}, runtime {:?}, API {} ({}), state in {}",
        args.node_ip,
        args.runtime,
        servers.join(","),
        credentials.source,
        cfg.data_dir.display()
    );
    Agent::run(cfg, control, crate::roles::shutdown_signal()).await.context("agent failed")?;
    println!("berth agent: stopped");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The pod.
    pub pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Container (default: the first one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u64>,
    /// The previous run of the container (after a restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Stream a pod's logs from the API server (`GET .../pods/POD/log`), which relays them from the agent of
/// the pod's node; the CLI never contacts agents itself.
pub async fn logs(args: LogsArgs) -> Result<()> {
    let client = cli::connect(&args.client)?;
    let opts = LogRequest {
        container: args.container.clone(),
        follow: args.follow,
        tail_lines: args.tail,
        previous: args.previous,
    };
    let mut body = Box::pin(client.pod_logs(&args.namespace, &args.pod, &opts).await?);
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("log stream broke")?;
        out.write_all(&chunk).context("cannot write to stdout")?;
        out.flush().ok();
    }
    Ok(())
}
