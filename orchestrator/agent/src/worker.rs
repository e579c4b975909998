//! The pod worker: runs one pod's containers through a runtime, probes them, restarts them by policy and
//! keeps the container states from which the pod's status is built.
//!
//! One task per container. Each task owns its container's lifecycle (start or adopt, supervise, stop) and
//! writes only its own [`ContainerState`]; the agent turns the shared [`PodRunState`] into API status. Timing
//! (initial delays, probe periods, back-off) uses tokio time, so tests pause and advance the clock.

use super::control::ControlPlane;
use super::probe::{run_probe, ProbeConfig, ProbeTracker};
use super::restart::{should_restart, Backoff};
use super::runtime::{Adopted, ExitInfo, Runtime, RuntimeError, StartSpec, Started};
use super::spec::{pod_uid, resolve_env, resolve_mounts, EnvSources, Mount, PodFacts};
use model::{Container, Pod};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The state of one container, as Kubernetes shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: SystemTime },
    Terminated { exit: ExitInfo, reason: String, message: String, started_at: Option<SystemTime> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub ready: bool,
    pub started: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub container_id: Option<String>,
    /// Where the container's port answers on this node (127.0.0.1:host_port).
    pub host_port: Option<u16>,
    pub warnings: Vec<String>,
    /// The id of the previous run, kept for `logs --previous`.
    pub previous_id: Option<String>,
}

/// Everything known about one pod's containers.
#[derive(Debug, Clone, Default)]
pub struct PodRunState {
    pub containers: Vec<ContainerStatus>,
    pub start_time: Option<SystemTime>,
}

/// What a pod worker needs from the agent.
pub struct WorkerContext {
    pub runtime: Arc<dyn Runtime>,
    pub control: Arc<dyn ControlPlane>,
    pub node: String,
    /// The node's address: where workloads listen, the pods' `hostIP`/`podIP`, the probes' default host.
    pub node_ip: std::net::IpAddr,
    pub backoff: Backoff,
    pub http: reqwest::Client,
    /// Told the pod's key whenever its state changes.
    pub dirty: mpsc::UnboundedSender<(String, String)>,
}

/// Handle of a running pod worker.
pub struct PodWorker {
    pub uid: String,
    pub state: Arc<Mutex<PodRunState>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PodWorker {
    /// Start a worker for `pod`, adopting `adopted` containers (same pod uid) instead of starting new ones.
    pub fn spawn(ctx: Arc<WorkerContext>, pod: Pod, adopted: Vec<Adopted>) -> PodWorker {
        let containers = pod
            .spec
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                ready: false,
                started: false,
                restart_count: pod.recorded_restart_count(&c.name),
                state: ContainerState::Waiting { reason: "ContainerCreating".into(), message: String::new() },
                last_state: None,
                container_id: None,
                host_port: None,
                warnings: Vec::new(),
                previous_id: None,
            })
            .collect();
        let state = Arc::new(Mutex::new(PodRunState { containers, start_time: Some(SystemTime::now()) }));
        let (stop, stop_rx) = watch::channel(false);
        let pod = Arc::new(pod);
        let mut tasks = Vec::new();
        for (idx, c) in pod.spec.containers.iter().enumerate() {
            let mut mine: Vec<Adopted> = adopted.iter().filter(|a| a.container == c.name).cloned().collect();
            mine.sort_by_key(|a| a.attempt);
            let current = mine.pop();
            let previous = mine.pop();
            let extra: Vec<Adopted> = mine;
            let w = ContainerWorker {
                ctx: ctx.clone(),
                pod: pod.clone(),
                idx,
                container: c.clone(),
                state: state.clone(),
                stop: stop_rx.clone(),
            };
            tasks.push(tokio::spawn(async move {
                for e in extra {
                    let _ = w.ctx.runtime.remove(&e.started.id).await;
                }
                w.run(current, previous).await
            }));
        }
        let _ = ctx.dirty.send((pod.metadata.namespace.clone(), pod.metadata.name.clone()));
        PodWorker { uid: pod_uid(&pod).to_string(), state, stop, tasks }
    }

    /// Stop every container with the pod's grace period and remove them; returns when done.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Leave the containers running (agent shutdown): only the supervising tasks end.
    pub fn detach(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

enum Outcome {
    Exited(ExitInfo),
    ProbeKilled { exit: ExitInfo, message: String },
    Stopped,
}

struct ContainerWorker {
    ctx: Arc<WorkerContext>,
    pod: Arc<Pod>,
    idx: usize,
    container: Container,
    state: Arc<Mutex<PodRunState>>,
    stop: watch::Receiver<bool>,
}

impl ContainerWorker {
    fn update(&self, f: impl FnOnce(&mut ContainerStatus)) {
        {
            let mut s = self.state.lock();
            if let Some(c) = s.containers.get_mut(self.idx) {
                f(c);
            }
        }
        let _ = self.ctx.dirty.send((self.pod.metadata.namespace.clone(), self.pod.metadata.name.clone()));
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleep, unless the pod is being stopped first (returns false then).
    async fn sleep(&mut self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
        !self.stopping()
    }

    /// The container's environment and volumes, read from the ConfigMaps and Secrets it references now.
    async fn environment(&self) -> Result<(Vec<(String, String)>, Vec<Mount>), String> {
        let ns = &self.pod.metadata.namespace;
        let refs = self.pod.spec.container_config_references(&self.container);
        let mut sources = EnvSources::default();
        for name in refs.config_maps {
            match self.ctx.control.get_config_map(ns, &name).await {
                Ok(Some(m)) => {
                    sources.config_maps.insert(name, m);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot read configmap {name:?}: {e}")),
            }
        }
        for name in refs.secrets {
            match self.ctx.control.get_secret(ns, &name).await {
                Ok(Some(m)) => {
                    sources.secrets.insert(name, m);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot read secret {name:?}: {e}")),
            }
        }
        let facts = PodFacts { node_name: self.ctx.node.clone(), host_ip: self.ctx.node_ip.to_string() };
        let user = resolve_env(&self.pod, &self.container, &sources, &facts).map_err(|e| e.to_string())?;
        let mounts = resolve_mounts(&self.pod, &self.container, &sources).map_err(|e| e.to_string())?;
        let mut env = vec![
            ("POD_NAME".to_string(), self.pod.metadata.name.clone()),
            ("POD_NAMESPACE".to_string(), self.pod.metadata.namespace.clone()),
            ("NODE_NAME".to_string(), self.ctx.node.clone()),
        ];
        for (k, v) in user {
            if let Some(slot) = env.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = v;
            } else {
                env.push((k, v));
            }
        }
        Ok((env, mounts))
    }

    async fn start(&self, attempt: u32) -> Result<Started, (String, String)> {
        let (env, mounts) = self.environment().await.map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
        let c = &self.container;
        let spec = StartSpec {
            namespace: self.pod.metadata.namespace.clone(),
            pod: self.pod.metadata.name.clone(),
            pod_uid: pod_uid(&self.pod).to_string(),
            container: c.name.clone(),
            image: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            env,
            working_dir: c.working_dir.clone(),
            container_port: c.first_port(),
            limits: c.resources.limits(),
            attempt,
            mounts,
            host_ip: Some(self.ctx.node_ip),
        };
        self.ctx.runtime.start(&spec).await.map_err(|e| match e {
            RuntimeError::CannotRun { reason, message } => (reason.to_string(), message),
            other => ("RunContainerError".to_string(), other.to_string()),
        })
    }

    async fn run(mut self, mut adopted: Option<Adopted>, previous: Option<Adopted>) {
        let name = self.container.name.clone();
        if let Some(p) = previous {
            self.update(|c| c.previous_id = Some(p.started.id.clone()));
        }
        let mut attempt = adopted.as_ref().map(|a| a.attempt).unwrap_or_else(|| self.pod.recorded_restart_count(&name));
        let mut backoffs = 0u32;
        let policy = self.pod.spec.restart_policy;
        let grace = self.pod.spec.termination_grace_period();
        loop {
            if self.stopping() {
                break;
            }
            let started = match adopted.take() {
                Some(a) => a.started,
                None => match self.start(attempt).await {
                    Ok(s) => s,
                    Err((reason, message)) => {
                        tracing::warn!(pod = %self.pod.metadata.name, container = %name, %reason, %message, "cannot start");
                        // A configuration error is waited out; a failed run counts as a crash.
                        let config_error = reason == "CreateContainerConfigError";
                        let exit = ExitInfo {
                            code: Some(128),
                            signal: None,
                            oom_killed: false,
                            finished_at: SystemTime::now(),
                            unknown: false,
                        };
                        if !config_error && !should_restart(policy, &exit, false) {
                            self.update(|c| {
                                c.state = ContainerState::Terminated { exit, reason, message, started_at: None };
                            });
                            let _ = self.stop.wait_for(|s| *s).await;
                            break;
                        }
                        // A missing ConfigMap or Secret is looked for again every initial back-off (10 s by
                        // default) rather than at a growing delay, so a pod starts soon after it appears.
                        let delay = if config_error {
                            self.ctx.backoff.initial.min(self.ctx.backoff.max)
                        } else {
                            self.ctx.backoff.delay(backoffs)
                        };
                        backoffs += u32::from(!config_error);
                        self.update(|c| {
                            if !config_error {
                                c.last_state = Some(ContainerState::Terminated {
                                    exit: exit.clone(),
                                    reason: reason.clone(),
                                    message: message.clone(),
                                    started_at: None,
                                });
                                c.restart_count += 1;
                            }
                            c.state = ContainerState::Waiting { reason, message };
                        });
                        if !self.sleep(delay).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let id = started.id.clone();
            let startup_cfg = self.probe_cfg("startup", &started);
            let has_startup = self.container.startup_probe.is_some();
            let has_readiness = self.container.readiness_probe.is_some();
            self.update(|c| {
                if let Some(old) = c.container_id.replace(id.clone()) {
                    if old != id {
                        c.previous_id = Some(old);
                    }
                }
                c.state = ContainerState::Running { started_at: started.started_at };
                c.host_port = Some(started.host_port);
                c.warnings = started.warnings.clone();
                c.started = !has_startup;
                c.ready = !has_startup && !has_readiness;
            });
            let run_started = Instant::now();
            let outcome = self.supervise(&started, startup_cfg).await;
            self.update(|c| {
                c.ready = false;
            });
            let (exit, killed, message) = match outcome {
                Outcome::Stopped => {
                    let _ = self.ctx.runtime.stop(&id, grace).await;
                    break;
                }
                Outcome::Exited(exit) => (exit, false, String::new()),
                Outcome::ProbeKilled { exit, message } => (exit, true, message),
            };
            let reason = exit.reason().to_string();
            let terminated = ContainerState::Terminated {
                exit: exit.clone(),
                reason: reason.clone(),
                message: message.clone(),
                started_at: Some(started.started_at),
            };
            if !should_restart(policy, &exit, killed) {
                self.update(|c| c.state = terminated);
                let _ = self.stop.wait_for(|s| *s).await;
                break;
            }
            if run_started.elapsed() >= self.ctx.backoff.reset_after {
                backoffs = 0;
            }
            let delay = self.ctx.backoff.restart_delay(backoffs);
            backoffs += 1;
            let waiting = if delay.is_zero() {
                ContainerState::Waiting { reason: "ContainerCreating".into(), message: String::new() }
            } else {
                let message = format!(
                    "back-off {delay:?} restarting failed container={name} pod={}_{}",
                    self.pod.metadata.name, self.pod.metadata.namespace
                );
                ContainerState::Waiting { reason: "CrashLoopBackOff".into(), message }
            };
            self.update(|c| {
                c.last_state = Some(terminated);
                c.restart_count += 1;
                c.state = waiting;
            });
            // Keep one previous run (for `logs --previous`); drop the one before.
            let older = self.state.lock().containers.get(self.idx).and_then(|c| c.previous_id.clone());
            if let Some(older) = older.filter(|o| *o != id) {
                let _ = self.ctx.runtime.remove(&older).await;
            }
            self.update(|c| c.previous_id = Some(id.clone()));
            if !self.sleep(delay).await {
                break;
            }
            attempt += 1;
        }
        // Pod stopping: remove what this container left behind.
        let (current, previous) = {
            let s = self.state.lock();
            let c = s.containers.get(self.idx);
            (c.and_then(|c| c.container_id.clone()), c.and_then(|c| c.previous_id.clone()))
        };
        for id in [current, previous].into_iter().flatten() {
            let _ = self.ctx.runtime.stop(&id, grace).await;
            if let Err(e) = self.ctx.runtime.remove(&id).await {
                tracing::warn!(%id, "cannot remove container: {e}");
            }
        }
    }

    fn probe_cfg(&self, which: &'static str, started: &Started) -> Option<Result<ProbeConfig, String>> {
        let probe = match which {
            "startup" => self.container.startup_probe.as_ref(),
            "liveness" => self.container.liveness_probe.as_ref(),
            _ => self.container.readiness_probe.as_ref(),
        }?;
        let declared = self.container.first_port();
        let host_port = started.host_port;
        Some(
            ProbeConfig::from_spec(which, probe, &self.container, &self.ctx.node_ip.to_string(), |p| {
                if declared.is_none() || Some(p) == declared {
                    host_port
                } else {
                    p
                }
            })
            .map_err(|e| e.to_string()),
        )
    }

    async fn supervise(&mut self, started: &Started, startup: Option<Result<ProbeConfig, String>>) -> Outcome {
        let id = started.id.clone();
        let runtime = self.ctx.runtime.clone();
        let wait_id = id.clone();
        let mut exit = Box::pin(async move { runtime.wait(&wait_id).await });
        let t0 = Instant::now();
        // Probes whose spec is invalid are reported once and treated as absent.
        let take = |w: &'static str, p: Option<Result<ProbeConfig, String>>| match p {
            Some(Ok(c)) => Some(c),
            Some(Err(m)) => {
                let msg = m.clone();
                self.update(|c| c.warnings.push(format!("ignored: {msg}")));
                tracing::warn!(probe = w, "{m}");
                None
            }
            None => None,
        };
        let startup = take("startup", startup);
        let liveness_cfg = self.probe_cfg("liveness", started);
        let readiness_cfg = self.probe_cfg("readiness", started);
        let liveness = take("liveness", liveness_cfg);
        let readiness = take("readiness", readiness_cfg);
        let mut startup_t = startup.as_ref().map(|c| (c.clone(), ProbeTracker::new(c, false), t0 + c.initial_delay));
        let mut live_t: Option<(ProbeConfig, ProbeTracker, Instant)> = None;
        let mut ready_t: Option<(ProbeConfig, ProbeTracker, Instant)> = None;
        let arm = |live_t: &mut Option<(ProbeConfig, ProbeTracker, Instant)>,
                   ready_t: &mut Option<(ProbeConfig, ProbeTracker, Instant)>| {
            *live_t = liveness.as_ref().map(|c| (c.clone(), ProbeTracker::new(c, true), t0 + c.initial_delay));
            *ready_t = readiness.as_ref().map(|c| (c.clone(), ProbeTracker::new(c, false), t0 + c.initial_delay));
        };
        if startup_t.is_none() {
            arm(&mut live_t, &mut ready_t);
        }
        if startup_t.is_none() && ready_t.is_none() {
            self.update(|c| c.ready = true);
        }
        loop {
            let next = [startup_t.as_ref().map(|t| t.2), live_t.as_ref().map(|t| t.2), ready_t.as_ref().map(|t| t.2)]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = &mut exit => {
                    return Outcome::Exited(r.unwrap_or_else(|_| ExitInfo {
                        code: None, signal: None, oom_killed: false, finished_at: SystemTime::now(), unknown: true,
                    }));
                }
                _ = self.stop.wait_for(|s| *s) => return Outcome::Stopped,
                _ = sleep => {}
            }
            let now = Instant::now();
            let rt = self.ctx.runtime.clone();
            if let Some((cfg, tr, at)) = startup_t.as_mut() {
                if *at <= now {
                    let r = run_probe(&cfg.action, cfg.timeout, rt.as_ref(), &id, &self.ctx.http).await;
                    *at = Instant::now() + cfg.period;
                    match tr.record(&r) {
                        Some(true) => {
                            startup_t = None;
                            arm(&mut live_t, &mut ready_t);
                            let ready_now = ready_t.is_none();
                            self.update(|c| {
                                c.started = true;
                                c.ready = ready_now;
                            });
                        }
                        Some(false) => {
                            let message =
                                format!("Startup probe failed: {}", tr.last_failure.clone().unwrap_or_default());
                            return self.kill_for_probe(&id, message).await;
                        }
                        None => {}
                    }
                    continue;
                }
            }
            if let Some((cfg, tr, at)) = live_t.as_mut() {
                if *at <= now {
                    let r = run_probe(&cfg.action, cfg.timeout, rt.as_ref(), &id, &self.ctx.http).await;
                    *at = Instant::now() + cfg.period;
                    if tr.record(&r) == Some(false) {
                        let message = format!(
                            "Container {} failed liveness probe, will be restarted: {}",
                            self.container.name,
                            tr.last_failure.clone().unwrap_or_default()
                        );
                        return self.kill_for_probe(&id, message).await;
                    }
                }
            }
            if let Some((cfg, tr, at)) = ready_t.as_mut() {
                if *at <= now {
                    let r = run_probe(&cfg.action, cfg.timeout, rt.as_ref(), &id, &self.ctx.http).await;
                    *at = Instant::now() + cfg.period;
                    if let Some(ready) = tr.record(&r) {
                        let msg = tr.last_failure.clone();
                        self.update(|c| {
                            c.ready = ready;
                            if !ready {
                                if let Some(m) = msg {
                                    tracing::info!(container = %c.name, "readiness probe failed: {m}");
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    async fn kill_for_probe(&self, id: &str, message: String) -> Outcome {
        tracing::info!(pod = %self.pod.metadata.name, "{message}");
        let _ = self.ctx.runtime.stop(id, self.pod.spec.termination_grace_period()).await;
        let exit = self.ctx.runtime.wait(id).await.unwrap_or(ExitInfo {
            code: None,
            signal: Some(9),
            oom_killed: false,
            finished_at: SystemTime::now(),
            unknown: false,
        });
        Outcome::ProbeKilled { exit, message }
    }
}

fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn state_json(s: &ContainerState) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        ContainerState::Running { started_at } => {
            json!({"running": {"startedAt": ts(*started_at)}})
        }
        ContainerState::Terminated { exit, reason, message, started_at } => {
            let mut t = json!({
                "exitCode": exit.exit_code(),
                "reason": reason,
                "finishedAt": ts(exit.finished_at),
            });
            if let Some(sig) = exit.signal {
                t["signal"] = json!(sig);
            }
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            if let Some(s) = started_at {
                t["startedAt"] = json!(ts(*s));
            }
            json!({"terminated": t})
        }
    }
}

/// Build a pod's `status` from its containers. Where each container answers is reported as
/// `status.containerStatuses[].ports[] = {containerPort, hostPort, protocol}` (Berth extension of the model):
/// endpoints are `status.hostIP:hostPort`, with `host_ip` the node's address.
pub fn pod_status(pod: &Pod, state: &PodRunState, runtime_kind: &str, host_ip: &str) -> Value {
    let cs = &state.containers;
    let all_terminated = !cs.is_empty() && cs.iter().all(|c| matches!(c.state, ContainerState::Terminated { .. }));
    let any_running = cs.iter().any(|c| matches!(c.state, ContainerState::Running { .. }));
    let ever_ran = cs.iter().any(|c| c.last_state.is_some() || c.restart_count > 0);
    let phase = if all_terminated {
        let ok = cs.iter().all(|c| matches!(&c.state, ContainerState::Terminated { exit, .. } if exit.succeeded()));
        if ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || ever_ran {
        "Running"
    } else {
        "Pending"
    };
    let ready = !cs.is_empty() && cs.iter().all(|c| c.ready);
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    let mut conditions = vec![
        cond("PodScheduled", true),
        cond("Initialized", true),
        cond("ContainersReady", ready),
        cond("Ready", ready),
    ];
    let warnings: Vec<String> =
        cs.iter().flat_map(|c| c.warnings.iter().map(move |w| format!("{}: {w}", c.name))).collect();
    if !warnings.is_empty() {
        conditions.push(json!({
            "type": "LimitsEnforced", "status": "False", "reason": "LimitsNotEnforced", "message": warnings.join("; "),
        }));
    }
    let statuses: Vec<Value> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "name": c.name,
                "ready": c.ready,
                "started": c.started,
                "restartCount": c.restart_count,
                "state": state_json(&c.state),
                "lastState": c.last_state.as_ref().map(state_json).unwrap_or_else(|| json!({})),
            });
            if !c.image.is_empty() {
                v["image"] = json!(c.image);
            }
            if let Some(id) = &c.container_id {
                v["containerID"] = json!(format!("{runtime_kind}://{id}"));
            }
            if let Some(p) = c.host_port {
                let declared = pod.spec.containers.get(i).and_then(Container::first_port).unwrap_or(p);
                v["ports"] = json!([{"containerPort": declared, "hostPort": p, "protocol": "TCP"}]);
            }
            v
        })
        .collect();
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "podIP": host_ip,
        "containerStatuses": statuses,
    });
    if let Some(t) = state.start_time {
        status["startTime"] = json!(ts(t));
    }
    if !warnings.is_empty() {
        status["message"] = json!(warnings.join("; "));
    }
    status
}
