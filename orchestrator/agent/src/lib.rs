//! The node agent (Berth's kubelet): registers a node, runs the pods bound to it through a [`Runtime`],
//! probes and restarts them, reports their status, and serves their logs.
//!
//! Boundary: the agent talks to the control plane only through [`ControlPlane`] and to containers only
//! through [`Runtime`]. It keeps no state of its own that it cannot rebuild: on start it asks the runtime what
//! is already running (a state file for `process`, labels for `docker`), adopts the containers of pods still
//! bound to it and removes the others. Stopping the agent leaves pods running unless
//! [`AgentConfig::stop_pods_on_shutdown`] is set.
//!
//! Status contract: pod status carries `phase`, `conditions` (`Ready`, `ContainersReady`, ...; `LimitsEnforced`
//! False with a message when limits cannot be enforced; each with `lastTransitionTime`, in microseconds), `hostIP`/`podIP` ([`AgentConfig::node_ip`]) and `containerStatuses`
//! with `ready`, `started`, `restartCount`, `state`, `lastState`, `containerID` and **`ports[]`**
//! (`{containerPort, hostPort, protocol}`): a pod's endpoint is `hostIP:hostPort`. The node's status carries `capacity`, `allocatable`, `addresses`, a `Ready`
//! condition and `heartbeatTime`, renewed every [`AgentConfig::heartbeat`], and
//! `daemonEndpoints.agentEndpoint.Port`, where `GET /logs/NS/POD?container=&follow=&tail=&previous=` answers.

pub mod control;
pub mod echo;
pub mod http;
pub mod logs;
pub mod probe;
pub mod restart;
pub mod runtime;
pub mod spec;
pub mod worker;

pub use control::{ControlPlane, ControlPlaneError, MemoryControlPlane, PodEvent};
pub use http::HttpControlPlane;
pub use restart::Backoff;
pub use runtime::{Runtime, RuntimeError};

use futures::{FutureExt, StreamExt};
use model::Pod;
use parking_lot::Mutex;
use serde_json::{json, Value};
use spec::{decode_pod, identity, pod_uid};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use worker::{PodWorker, WorkerContext};

/// Which runtime the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Process,
    Docker,
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(RuntimeKind::Process),
            "docker" => Ok(RuntimeKind::Docker),
            other => Err(format!("unknown runtime {other:?} (process|docker)")),
        }
    }
}

/// What an agent runs with. `Debug` omits `logs_token`.
#[derive(Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's address (default 127.0.0.1): its `InternalIP`, the pods' `hostIP`/`podIP`, and where
    /// workloads listen, so that a proxy on another host reaches `node_ip:hostPort`.
    pub node_ip: std::net::IpAddr,
    /// `cpu`, `memory`, `pods`, ... as Kubernetes quantities; reported as capacity and allocatable.
    pub capacity: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub runtime: RuntimeKind,
    pub data_dir: PathBuf,
    /// Where a `berth` command resolves to for the process runtime (default: the running binary).
    pub self_exe: Option<PathBuf>,
    pub port_range: std::ops::RangeInclusive<u16>,
    pub heartbeat: Duration,
    pub backoff: Backoff,
    /// Run pods that have no `spec.nodeName` (binding them to this node) until a scheduler exists.
    pub claim_unbound: bool,
    /// The logs listener (127.0.0.1:0 picks a port).
    pub logs_listen: String,
    /// When set (and `ca` is not), the plain-HTTP logs endpoint requires this bearer token.
    pub logs_token: Option<String>,
    /// The cluster CA. When set, the logs endpoint serves TLS with a certificate the control plane signs for
    /// this node, and accepts only the API server's client certificate (`logs_token` is then unused).
    pub ca: Option<pki::CaCert>,
    pub stop_pods_on_shutdown: bool,
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            node_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            capacity: parse_kv_list("cpu=2,memory=4Gi,pods=110").unwrap_or_default(),
            labels: BTreeMap::new(),
            runtime: RuntimeKind::Process,
            data_dir: data_dir.into(),
            self_exe: None,
            port_range: 30000..=32767,
            heartbeat: Duration::from_secs(5),
            backoff: Backoff::default(),
            claim_unbound: false,
            logs_listen: "127.0.0.1:0".into(),
            logs_token: None,
            ca: None,
            stop_pods_on_shutdown: false,
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("node_name", &self.node_name)
            .field("node_ip", &self.node_ip)
            .field("capacity", &self.capacity)
            .field("labels", &self.labels)
            .field("runtime", &self.runtime)
            .field("data_dir", &self.data_dir)
            .field("self_exe", &self.self_exe)
            .field("port_range", &self.port_range)
            .field("heartbeat", &self.heartbeat)
            .field("backoff", &self.backoff)
            .field("claim_unbound", &self.claim_unbound)
            .field("logs_listen", &self.logs_listen)
            .field("logs_token", &self.logs_token.as_ref().map(|_| "****"))
            .field("ca", &self.ca)
            .field("stop_pods_on_shutdown", &self.stop_pods_on_shutdown)
            .finish()
    }
}

/// This host's name (the default node name).
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).filter(|h| !h.is_empty())
}

/// Parse `k=v,k2=v2` (capacity and label flags).
pub fn parse_kv_list(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("{part:?}: empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("control plane: {0}")]
    ControlPlane(#[from] ControlPlaneError),
    #[error("logs listener on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

type PodKey = (String, String);

/// First and longest wait between attempts to watch pods while the control plane is unreachable.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(200);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// The agent's live pods, shared with the logs server.
#[derive(Default)]
pub struct PodTable {
    workers: Mutex<HashMap<PodKey, (Pod, PodWorker)>>,
}

impl PodTable {
    /// The container id of `container` (first container when `None`) of a pod, or of its previous run.
    pub fn container_id(&self, ns: &str, pod: &str, container: Option<&str>, previous: bool) -> Result<String, String> {
        let w = self.workers.lock();
        let (_, worker) = w
            .get(&(ns.to_string(), pod.to_string()))
            .ok_or_else(|| format!("pod {ns}/{pod} does not run on this node"))?;
        let st = worker.state.lock();
        let c = match container {
            Some(name) => st
                .containers
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("container {name:?} is not in pod {pod}"))?,
            None => st.containers.first().ok_or_else(|| format!("pod {pod} has no containers"))?,
        };
        let id = if previous { c.previous_id.clone() } else { c.container_id.clone() };
        id.ok_or_else(|| {
            if previous {
                format!("previous terminated container {:?} in pod {pod} not found", c.name)
            } else {
                format!("container {:?} in pod {pod} has not started", c.name)
            }
        })
    }
}

/// A running agent's handles, for in-process use (`berth up`) and tests.
pub struct Agent;

impl Agent {
    /// Build the configured runtime and run until `shutdown` resolves.
    pub async fn run(
        config: AgentConfig,
        control: Arc<dyn ControlPlane>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        let runtime = build_runtime(&config).await?;
        Self::run_with_runtime(config, control, runtime, shutdown, |_| {}).await
    }

    /// Run with a given runtime. `on_ready` receives the logs endpoint address once the node is registered.
    pub async fn run_with_runtime(
        config: AgentConfig,
        control: Arc<dyn ControlPlane>,
        runtime: Arc<dyn Runtime>,
        shutdown: impl Future<Output = ()> + Send,
        on_ready: impl FnOnce(std::net::SocketAddr) + Send,
    ) -> Result<(), AgentError> {
        let table = Arc::new(PodTable::default());
        let listener = tokio::net::TcpListener::bind(&config.logs_listen)
            .await
            .map_err(|e| AgentError::Listen { addr: config.logs_listen.clone(), source: e })?;
        let logs_addr =
            listener.local_addr().map_err(|e| AgentError::Listen { addr: config.logs_listen.clone(), source: e })?;
        let (logs_stop_tx, logs_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let logs_stop = async move {
            let _ = logs_stop_rx.await;
        };
        let served = match &config.ca {
            Some(ca) => {
                let mtls =
                    logs::MtlsConfig { control: control.clone(), node: config.node_name.clone(), ca: ca.clone() };
                logs::serve_mtls(listener, table.clone(), runtime.clone(), mtls, logs_stop).boxed()
            }
            None => logs::serve(listener, table.clone(), runtime.clone(), config.logs_token.clone(), logs_stop).boxed(),
        };
        let logs_task = tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!("logs listener on {logs_addr}: {e}");
            }
        });

        let node_status =
            move |cfg: &AgentConfig, kind: &str| node_status(cfg, kind, logs_addr.port(), SystemTime::now());
        tokio::pin!(shutdown);
        // An agent (re)started while no server answers waits for one, as kubelet does: the pods it will adopt
        // keep running meanwhile. Only an answer that is not an outage (e.g. a refused node object) is fatal.
        let mut retry = WATCH_RETRY_MIN;
        loop {
            let registered = async {
                control.register_node(&node_object(&config)).await?;
                control.update_node_status(&config.node_name, &node_status(&config, runtime.kind())).await
            };
            // `None`: stopped before any server answered.
            let outage = tokio::select! {
                r = registered => match r {
                    Ok(()) => break,
                    Err(ControlPlaneError::Unavailable(e)) => Some(e),
                    Err(e) => return Err(e.into()),
                },
                _ = &mut shutdown => None,
            };
            let stopped = match outage {
                Some(e) => {
                    tracing::warn!("cannot register node {}: {e}; retrying in {retry:?}", config.node_name);
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => false,
                        _ = &mut shutdown => true,
                    }
                }
                None => true,
            };
            if stopped {
                let _ = logs_stop_tx.send(());
                let _ = logs_task.await;
                return Ok(());
            }
            retry = (retry * 2).min(WATCH_RETRY_MAX);
        }
        let hb_control = control.clone();
        let hb_config = config.clone();
        let hb_kind = runtime.kind();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(hb_config.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) =
                    hb_control.update_node_status(&hb_config.node_name, &node_status(&hb_config, hb_kind)).await
                {
                    tracing::warn!("heartbeat: {e}");
                }
            }
        });

        let (dirty_tx, dirty_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(WorkerContext {
            runtime: runtime.clone(),
            control: control.clone(),
            node: config.node_name.clone(),
            node_ip: config.node_ip,
            backoff: config.backoff,
            http: probe_client(),
            dirty: dirty_tx.clone(),
        });
        let status_task = tokio::spawn(status_writer(
            dirty_rx,
            table.clone(),
            control.clone(),
            runtime.kind(),
            config.node_ip.to_string(),
            dirty_tx,
        ));
        let mut reconciler =
            Reconciler { cfg: config.clone(), ctx, table: table.clone(), adoptable: runtime.list().await? };
        on_ready(logs_addr);
        let mut first = true;
        // Only an agent that claims unbound pods needs to see them (and only an admin credential may).
        let pods_of = (!config.claim_unbound).then_some(config.node_name.as_str());
        // Static stability: losing the control plane never touches running pods. The agent resumes its watch
        // from the last revision it saw (on whichever server the client fails over to), lists again only
        // when that revision is gone, and retries forever with capped back-off meanwhile. A relist stops only
        // pods no longer bound here; pods it already runs (same uid) are left alone.
        let mut resume: Option<u64> = None;
        retry = WATCH_RETRY_MIN;
        let mut down_since: Option<std::time::Instant> = None;
        'outer: loop {
            let opened = match resume {
                Some(rev) => tokio::select! {
                    r = control.watch_pods(pods_of, Some(rev)) => r,
                    _ = &mut shutdown => break 'outer,
                },
                None => {
                    let pods = tokio::select! {
                        r = control.list_pods(pods_of) => r,
                        _ = &mut shutdown => break 'outer,
                    };
                    match pods {
                        Ok(pods) => {
                            let watch = control.watch_pods(pods_of, None).await;
                            reconciler.resync(pods, first).await;
                            first = false;
                            watch
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match opened {
                Ok(mut events) => {
                    if let Some(since) = down_since.take() {
                        tracing::info!(after = ?since.elapsed(), resumed_from = ?resume, "pod watch back");
                    }
                    let mut delivered = false;
                    loop {
                        let ev = tokio::select! {
                            ev = events.next() => ev,
                            _ = &mut shutdown => break 'outer,
                        };
                        let ev = match ev {
                            Some(Ok(ev)) => ev,
                            Some(Err(e)) => {
                                tracing::warn!("pod watch: {e}; resuming");
                                break;
                            }
                            None => break,
                        };
                        if !delivered {
                            delivered = true;
                            retry = WATCH_RETRY_MIN;
                        }
                        if let Some(rev) = ev.revision() {
                            resume = Some(resume.map_or(rev, |r| r.max(rev)));
                        }
                        match ev {
                            PodEvent::Upsert(p) => reconciler.upsert(&p).await,
                            PodEvent::Deleted(p) => reconciler.deleted(&p).await,
                            PodEvent::Progress(_) => {}
                        }
                    }
                    // A watch that ended after delivering is resumed at once (the client has failed over); one
                    // that ended empty-handed waits like a failed attempt, so a failing server is not spun on.
                    if delivered {
                        continue;
                    }
                }
                Err(ControlPlaneError::Expired(e)) => {
                    tracing::info!("{e}; listing pods again");
                    resume = None;
                    continue;
                }
                Err(e) => {
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!("cannot list/watch pods: {e}; pods keep running, retrying");
                    } else {
                        tracing::debug!("cannot list/watch pods: {e}");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = &mut shutdown => break 'outer,
            }
            retry = (retry * 2).min(WATCH_RETRY_MAX);
        }
        heartbeat.abort();
        let workers: Vec<(Pod, PodWorker)> = table.workers.lock().drain().map(|(_, v)| v).collect();
        for (pod, w) in workers {
            if config.stop_pods_on_shutdown {
                w.stop().await;
                let _ = runtime.cleanup_pod(&pod.metadata.namespace, &pod.metadata.name, pod_uid(&pod)).await;
            } else {
                w.detach();
            }
        }
        status_task.abort();
        let _ = logs_stop_tx.send(());
        let _ = logs_task.await;
        Ok(())
    }
}

/// Build the runtime `config` asks for.
pub async fn build_runtime(config: &AgentConfig) -> Result<Arc<dyn Runtime>, AgentError> {
    Ok(match config.runtime {
        RuntimeKind::Process => {
            let mut pc = runtime::process::ProcessConfig::new(config.data_dir.join("process"));
            if let Some(exe) = &config.self_exe {
                pc.self_exe = exe.clone();
            }
            pc.port_range = config.port_range.clone();
            runtime::process::ProcessRuntime::open(pc).await?
        }
        RuntimeKind::Docker => Arc::new(
            runtime::docker::DockerRuntime::connect(&config.node_name, config.data_dir.join("docker-volumes")).await?,
        ),
    })
}

fn node_object(cfg: &AgentConfig) -> Value {
    let mut labels = cfg.labels.clone();
    labels.entry("kubernetes.io/hostname".into()).or_insert_with(|| cfg.node_name.clone());
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels},
        "spec": {},
    })
}

/// The node's status: capacity, addresses, the heartbeat condition and the agent's endpoint.
pub fn node_status(cfg: &AgentConfig, runtime_kind: &str, agent_port: u16, now: SystemTime) -> Value {
    let t = humantime::format_rfc3339_seconds(now).to_string();
    json!({
        "capacity": cfg.capacity,
        "allocatable": cfg.capacity,
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip.to_string()},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "AgentReady",
            "message": "berth agent is posting ready status",
            "lastHeartbeatTime": t,
        }],
        "heartbeatTime": t,
        "daemonEndpoints": {"agentEndpoint": {"Port": agent_port}},
        "nodeInfo": {
            "containerRuntimeVersion": runtime_kind,
            "kubeletVersion": format!("berth-agent/{}", env!("CARGO_PKG_VERSION")),
            "operatingSystem": std::env::consts::OS,
            "architecture": std::env::consts::ARCH,
        },
    })
}

struct Reconciler {
    cfg: AgentConfig,
    ctx: Arc<WorkerContext>,
    table: Arc<PodTable>,
    /// Containers found at start, not yet claimed by a pod.
    adoptable: Vec<runtime::Adopted>,
}

impl Reconciler {
    fn mine(&self, pod: &Pod) -> bool {
        pod.spec.node_name.as_deref() == Some(self.cfg.node_name.as_str())
    }

    /// Bring the local pods in line with a full list; on the first pass also remove orphaned containers.
    async fn resync(&mut self, pods: Vec<Value>, first: bool) {
        let mut seen = std::collections::HashSet::new();
        for p in &pods {
            if let Some(id) = identity(p) {
                if id.node.as_deref() == Some(self.cfg.node_name.as_str()) && !id.terminating {
                    seen.insert(id.key);
                }
            }
            self.upsert(p).await;
        }
        let gone: Vec<PodKey> = self.table.workers.lock().keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for k in gone {
            self.stop_pod(&k).await;
        }
        if first {
            for a in std::mem::take(&mut self.adoptable) {
                tracing::info!(id = %a.started.id, pod = %format!("{}/{}", a.namespace, a.pod), "removing orphaned container");
                let _ = self.ctx.runtime.stop(&a.started.id, Duration::from_secs(10)).await;
                let _ = self.ctx.runtime.remove(&a.started.id).await;
                let _ = self.ctx.runtime.cleanup_pod(&a.namespace, &a.pod, &a.pod_uid).await;
            }
        }
    }

    async fn upsert(&mut self, p: &Value) {
        let pod = match decode_pod(p) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("ignoring undecodable pod: {e}");
                return;
            }
        };
        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        let unbound = pod.spec.node_name.as_deref().is_none_or(str::is_empty);
        if unbound && self.cfg.claim_unbound && !pod.is_terminating() {
            match self.ctx.control.bind_pod(&key.0, &key.1, &self.cfg.node_name).await {
                Ok(true) => {
                    tracing::info!(pod = %format!("{}/{}", key.0, key.1), "claimed unbound pod")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot bind {}/{}: {e}", key.0, key.1),
            }
            return;
        }
        let existing_uid = self.table.workers.lock().get(&key).map(|(p, _)| pod_uid(p).to_string());
        if !self.mine(&pod) || pod.is_terminating() {
            if existing_uid.is_some() {
                self.stop_pod(&key).await;
            }
            return;
        }
        match existing_uid {
            Some(uid) if uid == pod_uid(&pod) => return,
            Some(_) => self.stop_pod(&key).await,
            None => {}
        }
        let (adopt, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.adoptable)
            .into_iter()
            .partition(|a| a.pod_uid == pod_uid(&pod) && a.namespace == key.0 && a.pod == key.1);
        self.adoptable = rest;
        if !adopt.is_empty() {
            tracing::info!(pod = %format!("{}/{}", key.0, key.1), n = adopt.len(), "adopting running containers");
        }
        let worker = PodWorker::spawn(self.ctx.clone(), pod.clone(), adopt);
        self.table.workers.lock().insert(key, (pod, worker));
    }

    /// A deleted pod is stopped if it is the one running here.
    async fn deleted(&mut self, p: &Value) {
        let Some(id) = identity(p) else { return };
        let ours = self.table.workers.lock().get(&id.key).is_some_and(|(p, _)| pod_uid(p) == id.uid);
        if ours {
            self.stop_pod(&id.key).await;
        }
    }

    /// Stop a pod's containers (grace period), remove them and its working directory.
    async fn stop_pod(&mut self, key: &PodKey) {
        let Some((pod, worker)) = self.table.workers.lock().remove(key) else {
            return;
        };
        tracing::info!(pod = %format!("{}/{}", key.0, key.1), "stopping pod");
        let runtime = self.ctx.runtime.clone();
        // Stopping waits out grace periods: do it aside so the watch keeps flowing.
        tokio::spawn(async move {
            worker.stop().await;
            if let Err(e) = runtime.cleanup_pod(&pod.metadata.namespace, &pod.metadata.name, pod_uid(&pod)).await {
                tracing::warn!("cleanup of {}/{}: {e}", pod.metadata.namespace, pod.metadata.name);
            }
        });
    }
}

/// Give each condition of `status` its `lastTransitionTime`: kept from `previous` (the status last written)
/// while the condition's status is unchanged, else `now` (microseconds, so readers can order a pod's
/// readiness against other events, e.g. which requests it may have served).
fn stamp_transitions(previous: Option<&Value>, status: &mut Value, now: SystemTime) {
    let stamp = humantime::format_rfc3339_micros(now).to_string();
    let prev = previous.and_then(|p| p["conditions"].as_array());
    let Some(conditions) = status["conditions"].as_array_mut() else {
        return;
    };
    for c in conditions {
        let kept = prev
            .and_then(|p| p.iter().find(|o| o["type"] == c["type"] && o["status"] == c["status"]))
            .and_then(|o| o.get("lastTransitionTime"))
            .cloned();
        c["lastTransitionTime"] = kept.unwrap_or_else(|| json!(stamp));
    }
}

/// Writes pod status when a worker reports a change, coalescing bursts and skipping unchanged statuses.
async fn status_writer(
    mut dirty: mpsc::UnboundedReceiver<PodKey>,
    table: Arc<PodTable>,
    control: Arc<dyn ControlPlane>,
    runtime_kind: &'static str,
    host_ip: String,
    retry: mpsc::UnboundedSender<PodKey>,
) {
    let mut last: HashMap<PodKey, Value> = HashMap::new();
    while let Some(first) = dirty.recv().await {
        let mut keys = vec![first];
        while let Ok(k) = dirty.try_recv() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for key in keys {
            let mut status = {
                let w = table.workers.lock();
                match w.get(&key) {
                    Some((pod, worker)) => worker::pod_status(pod, &worker.state.lock(), runtime_kind, &host_ip),
                    None => {
                        last.remove(&key);
                        continue;
                    }
                }
            };
            stamp_transitions(last.get(&key), &mut status, SystemTime::now());
            if last.get(&key) == Some(&status) {
                continue;
            }
            match control.update_pod_status(&key.0, &key.1, &status).await {
                Ok(()) => {
                    last.insert(key, status);
                }
                Err(e) => {
                    tracing::warn!("status of {}/{}: {e} (retrying)", key.0, key.1);
                    let retry = retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = retry.send(key);
                    });
                }
            }
        }
    }
}

/// The HTTP client of HTTP probes. A host without system CA certificates (a minimal container) makes
/// reqwest's default build fail, and `Client::default()` panic: fall back to no trusted roots then, so
/// plain-HTTP probes still work and HTTPS probes fail verification instead of the agent panicking.
fn probe_client() -> reqwest::Client {
    pki::install_crypto_provider();
    let builder = || reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    builder().build().or_else(|_| builder().tls_certs_only(Vec::new()).build()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot build the probe HTTP client");
        reqwest::Client::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_omits_the_logs_token() {
        let mut cfg = AgentConfig::new("n", "/tmp");
        cfg.logs_token = Some("s3cr3t-token".into());
        let dbg = format!("{cfg:?}");
        assert!(dbg.contains("node_name") && !dbg.contains("s3cr3t-token"), "{dbg}");
    }

    #[test]
    fn condition_transition_times_move_only_when_the_status_flips() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let status = |ready: &str| json!({"conditions": [{"type": "Ready", "status": ready}, {"type": "PodScheduled", "status": "True"}]});
        let mut first = status("False");
        stamp_transitions(None, &mut first, t(10));
        assert_eq!(first["conditions"][0]["lastTransitionTime"], "1970-01-01T00:00:10.000000Z");
        let mut ready = status("True");
        stamp_transitions(Some(&first), &mut ready, t(20));
        assert_eq!(ready["conditions"][0]["lastTransitionTime"], "1970-01-01T00:00:20.000000Z");
        assert_eq!(ready["conditions"][1]["lastTransitionTime"], "1970-01-01T00:00:10.000000Z", "unchanged: kept");
        let mut again = status("True");
        stamp_transitions(Some(&ready), &mut again, t(30));
        assert_eq!(again, ready, "nothing flipped: the same status, so the writer skips it");
    }
}
